# syntax=docker/dockerfile:1.7
#
# Floyd's container image, used by charts/floyd.
#   docker build -t ghcr.io/floyd-dev/floyd:0.1.0 .
# Multi-stage: a Rust toolchain builds a release binary; the runtime stage is
# Debian slim with only CA certificates and the TLS/zlib libraries libgit2
# links against, running as an unprivileged user (65532) on a read-only
# root filesystem (the chart mounts emptyDirs at /var/lib/floyd and /tmp).
#
# Not built in Floyd's own CI: its machines run no container engine. The
# pieces it relies on (the release binary, `floyd run` reading FLOYD_* env)
# are built and tested there.

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev cmake make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so a source-only change reuses this layer.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && for b in manifest engine local gitops api; do echo 'fn main() {}' > benches/$b.rs; done \
 && cargo build --release --locked --bin floyd \
 && rm -rf src benches
COPY src ./src
COPY benches ./benches
# touch: make cargo rebuild the crate itself, not the cached stub.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin floyd \
 && install -m 0755 target/release/floyd /usr/local/bin/floyd \
 && /usr/local/bin/floyd --version

FROM debian:${DEBIAN}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 floyd \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/floyd --shell /usr/sbin/nologin floyd \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/floyd
COPY --from=build /usr/local/bin/floyd /usr/local/bin/floyd
USER 65532:65532
WORKDIR /var/lib/floyd
ENV FLOYD_LISTEN=0.0.0.0:9180 \
    FLOYD_STATE_DIR=/var/lib/floyd \
    FLOYD_LOG_FORMAT=json
EXPOSE 9180
ENTRYPOINT ["/usr/local/bin/floyd"]
CMD ["run"]
