#!/usr/bin/env bash
# GitHub's official OpenAPI description (npm package @octokit/openapi), for
# the tests that validate Floyd's GitHub API requests against it
# (tests/gitops/openapi.rs). Idempotent. PREFIX defaults to ./.tools.
set -euo pipefail
PREFIX="${PREFIX:-$PWD/.tools}"
VERSION=23.0.2
dest="$PREFIX/octokit"
spec="$dest/node_modules/@octokit/openapi/generated/api.github.com.json"
if [ -f "$spec" ] && grep -q "\"version\": \"$VERSION\"" "$dest/node_modules/@octokit/openapi/package.json"; then
  exit 0
fi
command -v npm >/dev/null || { echo "npm is needed to install @octokit/openapi" >&2; exit 1; }
mkdir -p "$dest"
npm install --prefix "$dest" --no-save --no-audit --no-fund --silent "@octokit/openapi@$VERSION"
test -f "$spec"
