#!/usr/bin/env bash
# Build (or reuse) grpcurl, an independent gRPC client, for sessiongate's tests and for calling
# sessiongate by hand (docs/grpcurl.md).
#
#   scripts/grpcurl.sh build    -> builds (or reuses) the pinned grpcurl; last stdout line = binary path
#   scripts/grpcurl.sh protoset -> prints the path of envoy-types' descriptor set (types.bin), which
#                                  holds envoy.service.auth.v3 for `grpcurl -protoset`
#   scripts/grpcurl.sh version  -> prints the pinned version
#
# Env: SESSIONGATE_GRPCURL_BIN (use this binary, skip the build),
#      SESSIONGATE_CACHE_DIR (default ~/.cache/sessiongate), GRPCURL_VERSION (default: the pin below),
#      CARGO (cargo binary for `protoset`, default `cargo`).
set -euo pipefail

# Pinned version: the newest `go list -m -versions github.com/fullstorydev/grpcurl` listed
# (v1.9.3 and v1.9.4 are the latest; pin the newest).
GRPCURL_VERSION="${GRPCURL_VERSION:-v1.9.4}"
GRPCURL_MODULE="github.com/fullstorydev/grpcurl"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${SESSIONGATE_CACHE_DIR:-$HOME/.cache/sessiongate}"
BIN_DIR="$CACHE_DIR/grpcurl-$GRPCURL_VERSION"
BIN="$BIN_DIR/grpcurl"

log() { echo "grpcurl.sh: $*" >&2; }
# shellcheck source=lib/gobuild.sh
source "$REPO_ROOT/scripts/lib/gobuild.sh"

cmd_build() {
  gobuild_cached grpcurl "$BIN" "${SESSIONGATE_GRPCURL_BIN:-}" && return 0
  local work start=$SECONDS
  work="$(mktemp -d "$CACHE_DIR/grpcurl-build.XXXXXX")"
  log "building $GRPCURL_MODULE/cmd/grpcurl@$GRPCURL_VERSION via the Go module proxy"
  # No replace directives in grpcurl: `go install mod@ver` works directly.
  # GOTOOLCHAIN=local: use the installed Go, never download a toolchain.
  # CGO_ENABLED=0: a static binary, no C compiler needed.
  if ! (GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$work" \
        go install -trimpath -ldflags "-s -w -X main.version=$GRPCURL_VERSION" \
        "$GRPCURL_MODULE/cmd/grpcurl@$GRPCURL_VERSION") >&2; then
    gobuild_cleanup "$work"
    log "go install failed (see above)"
    exit 1
  fi
  gobuild_install "$work/grpcurl" "$BIN" "$start"
  gobuild_cleanup "$work"
}

cmd_protoset() {
  local cargo="${CARGO:-cargo}" meta
  meta="$("$cargo" metadata --format-version 1 --manifest-path "$REPO_ROOT/Cargo.toml" --offline 2>/dev/null \
          || "$cargo" metadata --format-version 1 --manifest-path "$REPO_ROOT/Cargo.toml")"
  local manifest
  manifest="$(printf '%s' "$meta" | python3 -c '
import json, sys
m = json.load(sys.stdin)
root = m["resolve"]["root"]
deps = next(n["dependencies"] for n in m["resolve"]["nodes"] if n["id"] == root)
c = [p for p in m["packages"] if p["name"] == "envoy-types" and p["id"] in deps]
print(c[0]["manifest_path"] if c else "")
')"
  [[ -n "$manifest" ]] || { log "envoy-types not found in cargo metadata"; exit 1; }
  local set
  set="$(dirname "$manifest")/src/generated/types.bin"
  [[ -f "$set" ]] || { log "$set missing (envoy-types layout changed?)"; exit 1; }
  echo "$set"
}

case "${1:-}" in
  build) cmd_build ;;
  protoset) cmd_protoset ;;
  version) echo "$GRPCURL_VERSION" ;;
  *) echo "usage: $0 {build|protoset|version}" >&2; exit 2 ;;
esac
