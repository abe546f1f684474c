#!/usr/bin/env bash
# Build / start / stop a real Ory Hydra for sessiongate's OAuth2 integration tests.
#
#   scripts/hydra.sh build   -> builds (or reuses) the pinned hydra binary; last stdout line = binary path
#   scripts/hydra.sh start   -> builds if needed, serves an in-memory Hydra on loopback, waits for ready
#   scripts/hydra.sh stop    -> stops the instance started by `start`
#   scripts/hydra.sh status  -> prints whether it runs
#
# Env: SESSIONGATE_HYDRA_BIN (use this binary, skip the build),
#      SESSIONGATE_CACHE_DIR (default ~/.cache/sessiongate), HYDRA_VERSION (default: the pin below),
#      HYDRA_PUBLIC_PORT (4444), HYDRA_ADMIN_PORT (4445), HYDRA_RUN_DIR (default $CACHE/run),
#      HYDRA_READY_TIMEOUT (60 s).
set -euo pipefail

HYDRA_VERSION="${HYDRA_VERSION:-v2.3.0}"
HYDRA_MODULE="github.com/ory/hydra/v2"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${SESSIONGATE_CACHE_DIR:-$HOME/.cache/sessiongate}"
BIN_DIR="$CACHE_DIR/hydra-$HYDRA_VERSION"
BIN="$BIN_DIR/hydra"
CONFIG="$REPO_ROOT/tests/hydra/hydra.yml"
PUBLIC_PORT="${HYDRA_PUBLIC_PORT:-4444}"
ADMIN_PORT="${HYDRA_ADMIN_PORT:-4445}"
RUN_DIR="${HYDRA_RUN_DIR:-$CACHE_DIR/run}"
PID_FILE="$RUN_DIR/hydra.pid"
READY_TIMEOUT="${HYDRA_READY_TIMEOUT:-60}"

log() { echo "hydra.sh: $*" >&2; }
# shellcheck source=lib/gobuild.sh
source "$REPO_ROOT/scripts/lib/gobuild.sh"
# shellcheck source=lib/daemon.sh
source "$REPO_ROOT/scripts/lib/daemon.sh"

cmd_build() {
  gobuild_cached hydra "$BIN" "${SESSIONGATE_HYDRA_BIN:-}" && return 0
  command -v gcc >/dev/null || { log "gcc not found (CGO sqlite needs a C compiler)"; exit 1; }
  local work start=$SECONDS
  work="$(mktemp -d "$CACHE_DIR/hydra-src.XXXXXX")"
  gobuild_source "$HYDRA_MODULE" "$HYDRA_VERSION" "$work"
  log "building in $work/src (CGO_ENABLED=1 -tags sqlite); a cold build takes several minutes"
  (
    cd "$work/src"
    # The module replaces hydra-client-go with a nested directory the module zip does not carry;
    # the released client version named in the require line is used instead. `go install
    # mod@ver` / `go get -tool` refuse the module's other replace (a fork of pop), hence the copy.
    GOTOOLCHAIN=local go mod edit -dropreplace github.com/ory/hydra-client-go/v2
    GOTOOLCHAIN=local CGO_ENABLED=1 GOFLAGS=-mod=mod \
      go build -tags sqlite -trimpath \
      -ldflags "-s -w -X github.com/ory/hydra/v2/driver/config.Version=$HYDRA_VERSION" \
      -o "$work/hydra" .
  ) >&2 || { gobuild_cleanup "$work"; log "go build failed (see above)"; exit 1; }
  gobuild_install "$work/hydra" "$BIN" "$start"
  gobuild_cleanup "$work"
}

cmd_start() {
  if daemon_is_running "$PID_FILE"; then
    log "already running (pid $(cat "$PID_FILE"))"; exit 1
  fi
  local bin
  bin="$(cmd_build | tail -n1)"
  mkdir -p "$RUN_DIR"
  # In-memory store: nothing to migrate, nothing left behind.
  export DSN=memory
  export SERVE_PUBLIC_PORT="$PUBLIC_PORT" SERVE_PUBLIC_HOST=127.0.0.1
  export SERVE_ADMIN_PORT="$ADMIN_PORT" SERVE_ADMIN_HOST=127.0.0.1
  export URLS_SELF_ISSUER="http://127.0.0.1:$PUBLIC_PORT/"
  export LOG_LEVEL="${LOG_LEVEL:-info}"
  log "starting hydra (log: $RUN_DIR/hydra.log)"
  nohup "$bin" serve all --config "$CONFIG" --dev --sqa-opt-out >"$RUN_DIR/hydra.log" 2>&1 &
  echo $! >"$PID_FILE"
  daemon_wait_ready "$PID_FILE" "http://127.0.0.1:$ADMIN_PORT/health/ready" "$RUN_DIR/hydra.log" "$READY_TIMEOUT"
  echo "public: http://127.0.0.1:$PUBLIC_PORT"
  echo "admin:  http://127.0.0.1:$ADMIN_PORT"
  echo "pid:    $(cat "$PID_FILE") ($PID_FILE)"
}

case "${1:-}" in
  build) cmd_build ;;
  start) cmd_start ;;
  stop) daemon_stop "$PID_FILE" ;;
  status) daemon_status "$PID_FILE" ;;
  *) echo "usage: $0 {build|start|stop|status}" >&2; exit 2 ;;
esac
