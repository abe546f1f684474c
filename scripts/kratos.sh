#!/usr/bin/env bash
# Build / start / stop a real Ory Kratos for sessiongate's integration tests.
#
#   scripts/kratos.sh build   -> builds (or reuses) the pinned kratos binary; last stdout line = binary path
#   scripts/kratos.sh start   -> builds if needed, migrates a fresh SQLite DB, serves on loopback, waits for ready
#   scripts/kratos.sh stop    -> stops the instance started by `start`
#   scripts/kratos.sh status  -> prints whether it runs
#
# Env: SESSIONGATE_KRATOS_BIN (use this binary, skip the build),
#      SESSIONGATE_CACHE_DIR (default ~/.cache/sessiongate), KRATOS_VERSION (default: the pin below),
#      KRATOS_PUBLIC_PORT (4433), KRATOS_ADMIN_PORT (4434), KRATOS_RUN_DIR (default $CACHE/run),
#      KRATOS_READY_TIMEOUT (60 s).
set -euo pipefail

# Pinned version. v1.3.1 is the newest tag the Go module proxy lists for github.com/ory/kratos
# (newer year-based releases are not published as Go module versions there).
KRATOS_VERSION="${KRATOS_VERSION:-v1.3.1}"
KRATOS_MODULE="github.com/ory/kratos"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${SESSIONGATE_CACHE_DIR:-$HOME/.cache/sessiongate}"
BIN_DIR="$CACHE_DIR/kratos-$KRATOS_VERSION"
BIN="$BIN_DIR/kratos"
CONFIG="$REPO_ROOT/tests/kratos/kratos.yml"
PUBLIC_PORT="${KRATOS_PUBLIC_PORT:-4433}"
ADMIN_PORT="${KRATOS_ADMIN_PORT:-4434}"
RUN_DIR="${KRATOS_RUN_DIR:-$CACHE_DIR/run}"
PID_FILE="$RUN_DIR/kratos.pid"
READY_TIMEOUT="${KRATOS_READY_TIMEOUT:-60}"

log() { echo "kratos.sh: $*" >&2; }
# shellcheck source=lib/gobuild.sh
source "$REPO_ROOT/scripts/lib/gobuild.sh"
# shellcheck source=lib/daemon.sh
source "$REPO_ROOT/scripts/lib/daemon.sh"

cmd_build() {
  gobuild_cached kratos "$BIN" "${SESSIONGATE_KRATOS_BIN:-}" && return 0
  command -v gcc >/dev/null || { log "gcc not found (CGO sqlite needs a C compiler)"; exit 1; }
  local work start=$SECONDS
  work="$(mktemp -d "$CACHE_DIR/kratos-src.XXXXXX")"
  gobuild_source "$KRATOS_MODULE" "$KRATOS_VERSION" "$work"
  log "building in $work/src (CGO_ENABLED=1 -tags sqlite); a cold build takes several minutes"
  (
    cd "$work/src"
    # GOTOOLCHAIN=local: use the installed Go even though go.mod names toolchain go1.23.2.
    # GOFLAGS=-mod=mod: let go resolve go.sum-listed deps through the proxy.
    GOTOOLCHAIN=local CGO_ENABLED=1 GOFLAGS=-mod=mod \
      go build -tags sqlite -trimpath -ldflags "-s -w -X github.com/ory/kratos/driver/config.Version=$KRATOS_VERSION" \
      -o "$work/kratos" .
  ) >&2 || { gobuild_cleanup "$work"; log "go build failed (see above)"; exit 1; }
  gobuild_install "$work/kratos" "$BIN" "$start"
  gobuild_cleanup "$work"
}

cmd_start() {
  if daemon_is_running "$PID_FILE"; then
    log "already running (pid $(cat "$PID_FILE"))"; exit 1
  fi
  local bin
  bin="$(cmd_build | tail -n1)"
  mkdir -p "$RUN_DIR"
  local db="$RUN_DIR/kratos.sqlite"
  rm -f "$db" "$db-wal" "$db-shm"
  # _busy_timeout: concurrent writers wait for the SQLite lock instead of failing with 500s.
  export DSN="sqlite://$db?_fk=true&mode=rwc&_busy_timeout=10000"
  export SERVE_PUBLIC_PORT="$PUBLIC_PORT" SERVE_PUBLIC_HOST=127.0.0.1
  export SERVE_ADMIN_PORT="$ADMIN_PORT" SERVE_ADMIN_HOST=127.0.0.1
  export SERVE_PUBLIC_BASE_URL="http://127.0.0.1:$PUBLIC_PORT/"
  export SERVE_ADMIN_BASE_URL="http://127.0.0.1:$ADMIN_PORT/"
  export LOG_LEVEL="${LOG_LEVEL:-info}"
  export IDENTITY_SCHEMAS="[{\"id\":\"default\",\"url\":\"file://$REPO_ROOT/tests/kratos/identity.schema.json\"}]"
  log "migrating $db"
  "$bin" migrate sql -e --yes --config "$CONFIG" >"$RUN_DIR/migrate.log" 2>&1 \
    || { tail -n 30 "$RUN_DIR/migrate.log" >&2; exit 1; }
  log "starting kratos (log: $RUN_DIR/kratos.log)"
  nohup "$bin" serve --config "$CONFIG" --dev --sqa-opt-out >"$RUN_DIR/kratos.log" 2>&1 &
  echo $! >"$PID_FILE"
  daemon_wait_ready "$PID_FILE" "http://127.0.0.1:$ADMIN_PORT/health/ready" "$RUN_DIR/kratos.log" "$READY_TIMEOUT"
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
