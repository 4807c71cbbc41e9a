#!/usr/bin/env bash
# Floyd's whole test suite, on a fresh machine: installs what the tests need
# (idempotently, from this repo's own files), then runs fmt, clippy and every test.
#   ./scripts/test.sh            # everything
# Artifacts (screenshots, logs) go to ./test-artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# System packages the tests use: git (git daemon, git http-backend), chromium
# for the dashboard test, python3 for kubernetes-validate.
need_apt=()
command -v git >/dev/null || need_apt+=(git)
[ -x /usr/lib/git-core/git-http-backend ] || need_apt+=(git)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
command -v ssh-keygen >/dev/null || need_apt+=(openssh-client)  # signed-revert test keys
python3 -c 'import venv' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# helm, kubectl, kubernetes-validate (chart and kube-runtime tests).
PREFIX="$root/.tools" bash scripts/install-k8s-tools.sh >/dev/null
export PATH="$root/.tools/bin:$PATH"
# GitHub's OpenAPI description (the Git host tests validate requests against it).
command -v npm >/dev/null || need_npm=1
if [ "${need_npm:-0}" = 1 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq npm >/dev/null
fi
PREFIX="$root/.tools" bash scripts/install-octokit-openapi.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo build (the floyd binary the end-to-end tests run)"
cargo build --locked --bin floyd
mkdir -p test-artifacts
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
  cargo test --locked --doc
else
  cargo test --locked --no-fail-fast
fi
