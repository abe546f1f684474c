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

cmd_build() {
  if [[ -n "${SESSIONGATE_GRPCURL_BIN:-}" ]]; then
    [[ -x "$SESSIONGATE_GRPCURL_BIN" ]] || { log "SESSIONGATE_GRPCURL_BIN=$SESSIONGATE_GRPCURL_BIN is not executable"; exit 1; }
    log "using SESSIONGATE_GRPCURL_BIN"
    echo "$SESSIONGATE_GRPCURL_BIN"
    return 0
  fi
  if [[ -x "$BIN" ]]; then
    log "cached $BIN"
    echo "$BIN"
    return 0
  fi
  mkdir -p "$CACHE_DIR"
  # Several test binaries (or parallel tests) may ask for a build at once: serialise, then
  # re-check the cache.
  if command -v flock >/dev/null; then
    exec 9>"$CACHE_DIR/grpcurl-build.lock"
    flock 9
    if [[ -x "$BIN" ]]; then
      log "cached $BIN (built by a concurrent run)"
      echo "$BIN"
      return 0
    fi
  fi
  command -v go >/dev/null || { log "go not found in PATH (grpcurl is built from the Go module proxy)"; exit 1; }
  local work start=$SECONDS
  work="$(mktemp -d "$CACHE_DIR/grpcurl-build.XXXXXX")"
  trap 'rm -rf "$work"' RETURN
  log "building $GRPCURL_MODULE/cmd/grpcurl@$GRPCURL_VERSION via the Go module proxy"
  # GOTOOLCHAIN=local: use the installed Go, never download a toolchain.
  # CGO_ENABLED=0: a static binary, no C compiler needed.
  if ! (GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$work" \
        go install -trimpath -ldflags "-s -w -X main.version=$GRPCURL_VERSION" \
        "$GRPCURL_MODULE/cmd/grpcurl@$GRPCURL_VERSION") >&2; then
    log "go install failed (see above)"
    exit 1
  fi
  [[ -x "$work/grpcurl" ]] || { log "go install produced no binary in $work"; exit 1; }
  mkdir -p "$BIN_DIR"
  mv "$work/grpcurl" "$BIN.tmp.$$"
  mv "$BIN.tmp.$$" "$BIN"
  log "built $BIN in $((SECONDS - start)) s"
  echo "$BIN"
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
