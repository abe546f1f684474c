#!/usr/bin/env bash
# Envoy's own config validation rules, offline: builds tools/envoy-validate (Go, the Envoy API
# types of go-control-plane from the Go module proxy) and runs it. It decodes each file into
# envoy.config.bootstrap.v3.Bootstrap (unknown fields rejected) and checks every
# protoc-gen-validate rule, unpacking every typed_config into its concrete type.
#
#   scripts/envoy-validate.sh build         -> builds (or reuses) the validator; last stdout line = binary
#   scripts/envoy-validate.sh check FILE... -> validates the given Envoy bootstrap YAML files
#   scripts/envoy-validate.sh ci            -> envoy/*.yaml must pass; every tests/fixtures/envoy-invalid/*
#                                             must fail with the message its `# expect:` line names
#
# Env: SESSIONGATE_ENVOY_VALIDATE_BIN (use this binary, skip the build),
#      SESSIONGATE_CACHE_DIR (default ~/.cache/sessiongate).
# The cache key is a hash of tools/envoy-validate/{go.mod,go.sum,*.go}: edits rebuild it.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$REPO_ROOT/tools/envoy-validate"
CACHE_DIR="${SESSIONGATE_CACHE_DIR:-$HOME/.cache/sessiongate}"
HASH="$(cat "$SRC"/go.mod "$SRC"/go.sum "$SRC"/*.go | sha256sum | cut -c1-12)"
BIN="$CACHE_DIR/envoy-validate-$HASH/envoy-validate"

log() { echo "envoy-validate.sh: $*" >&2; }
# shellcheck source=lib/gobuild.sh
source "$REPO_ROOT/scripts/lib/gobuild.sh"

cmd_build() {
  gobuild_cached envoy-validate "$BIN" "${SESSIONGATE_ENVOY_VALIDATE_BIN:-}" && return 0
  local work start=$SECONDS
  work="$(mktemp -d "$CACHE_DIR/envoy-validate-build.XXXXXX")"
  log "building tools/envoy-validate (go-control-plane from the Go module proxy)"
  # GOTOOLCHAIN=local: the installed Go; -mod=readonly: go.sum is authoritative.
  if ! (cd "$SRC" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly \
        go build -trimpath -ldflags "-s -w" -o "$work/envoy-validate" .) >&2; then
    gobuild_cleanup "$work"
    log "go build failed (see above)"
    exit 1
  fi
  gobuild_install "$work/envoy-validate" "$BIN" "$start"
  gobuild_cleanup "$work"
}

validator() { cmd_build | tail -n1; }

cmd_check() {
  (($#)) || { echo "usage: $0 check FILE..." >&2; exit 2; }
  "$(validator)" "$@"
}

# Every broken fixture names, in a `# expect: TEXT` line, the violation it must be rejected for.
cmd_ci() {
  local bin start=$SECONDS f want out failed=0
  bin="$(validator)"
  log "Envoy rules: envoy/*.yaml"
  "$bin" "$REPO_ROOT"/envoy/*.yaml || failed=1
  log "negative: every tests/fixtures/envoy-invalid/*.yaml must be rejected for its stated reason"
  for f in "$REPO_ROOT"/tests/fixtures/envoy-invalid/*.yaml; do
    want="$(sed -n 's/^# expect: //p' "$f" | head -n1)"
    [[ -n "$want" ]] || { log "${f#"$REPO_ROOT"/}: no '# expect:' line"; failed=1; continue; }
    if out="$("$bin" "$f" 2>&1)"; then
      printf '%s\n' "$out"; log "${f#"$REPO_ROOT"/} was ACCEPTED (must fail: $want)"; failed=1
    elif ! grep -qF -- "$want" <<<"$out"; then
      printf '%s\n' "$out"; log "${f#"$REPO_ROOT"/} rejected, but not for: $want"; failed=1
    else
      log "rejected as expected: ${f#"$REPO_ROOT"/} ($want)"
    fi
  done
  ((failed == 0)) || { log "FAILED"; exit 1; }
  log "all Envoy configs pass Envoy's validation rules; all broken fixtures rejected ($((SECONDS - start)) s)"
}

case "${1:-}" in
  build) cmd_build ;;
  check) shift; cmd_check "$@" ;;
  ci) cmd_ci ;;
  *) echo "usage: $0 {build|check FILE...|ci}" >&2; exit 2 ;;
esac
