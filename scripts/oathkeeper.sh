#!/usr/bin/env bash
# Build / start / stop Ory Oathkeeper for sessiongate's side-by-side benchmark (scripts/bench.sh).
# Config templates: bench/oathkeeper.yml, bench/oathkeeper-rules.json.
#
#   scripts/oathkeeper.sh build   -> builds (or reuses) the pinned oathkeeper binary; last stdout line = binary path
#   scripts/oathkeeper.sh start   -> builds if needed, writes config + rules + JWKS into the run dir, serves on loopback
#   scripts/oathkeeper.sh stop    -> stops the instance started by `start`
#   scripts/oathkeeper.sh status
#
# Env: SESSIONGATE_OATHKEEPER_BIN (use this binary, skip the build),
#      SESSIONGATE_CACHE_DIR (default ~/.cache/sessiongate), OATHKEEPER_VERSION (default: the pin below),
#      OATHKEEPER_PROXY_PORT (4455), OATHKEEPER_API_PORT (4456),
#      OATHKEEPER_SESSION_URL (whoami URL the cookie_session authenticator calls;
#                              default http://127.0.0.1:4433/sessions/whoami),
#      OATHKEEPER_RUN_DIR (default $CACHE/run-oathkeeper), OATHKEEPER_READY_TIMEOUT (30 s),
#      OATHKEEPER_LOG_LEVEL (warn), OATHKEEPER_KEYGEN_BIN (sessiongate binary used to generate the id_token JWKS;
#                              default target/release/sessiongate).
set -euo pipefail

# Pinned version. `go list -m -versions github.com/ory/oathkeeper` answers 403 from the Go module
# proxy (the version list is not served), but explicit tags are: v0.40.9 (2025-01-30) is the
# newest v0.x tag; later year-based releases are not published as Go module versions.
OATHKEEPER_VERSION="${OATHKEEPER_VERSION:-v0.40.9}"
OATHKEEPER_MODULE="github.com/ory/oathkeeper"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${SESSIONGATE_CACHE_DIR:-$HOME/.cache/sessiongate}"
BIN_DIR="$CACHE_DIR/oathkeeper-$OATHKEEPER_VERSION"
BIN="$BIN_DIR/oathkeeper"
PROXY_PORT="${OATHKEEPER_PROXY_PORT:-4455}"
API_PORT="${OATHKEEPER_API_PORT:-4456}"
SESSION_URL="${OATHKEEPER_SESSION_URL:-http://127.0.0.1:4433/sessions/whoami}"
RUN_DIR="${OATHKEEPER_RUN_DIR:-$CACHE_DIR/run-oathkeeper}"
PID_FILE="$RUN_DIR/oathkeeper.pid"
READY_TIMEOUT="${OATHKEEPER_READY_TIMEOUT:-30}"
SG_BIN="${OATHKEEPER_KEYGEN_BIN:-$REPO_ROOT/target/release/sessiongate}"

log() { echo "oathkeeper.sh: $*" >&2; }
# shellcheck source=lib/gobuild.sh
source "$REPO_ROOT/scripts/lib/gobuild.sh"

cmd_build() {
  gobuild_cached oathkeeper "$BIN" "${SESSIONGATE_OATHKEEPER_BIN:-}" && return 0
  local work start=$SECONDS
  work="$(mktemp -d "$CACHE_DIR/oathkeeper-src.XXXXXX")"
  gobuild_source "$OATHKEEPER_MODULE" "$OATHKEEPER_VERSION" "$work"
  log "building in $work/src (a cold build takes several minutes)"
  (
    cd "$work/src"
    GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod \
      go build -trimpath -ldflags "-s -w -X github.com/ory/oathkeeper/x.Version=$OATHKEEPER_VERSION" \
      -o "$work/oathkeeper" .
  ) >&2 || { gobuild_cleanup "$work"; log "go build failed (see above)"; exit 1; }
  gobuild_install "$work/oathkeeper" "$BIN" "$start"
  gobuild_cleanup "$work"
}

is_running() { [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

write_config() {
  mkdir -p "$RUN_DIR"
  if [[ ! -s "$RUN_DIR/jwks.json" ]]; then
    [[ -x "$SG_BIN" ]] || { log "$SG_BIN missing: cargo build --release first"; exit 1; }
    "$SG_BIN" keys generate --alg ES256 --kid oathkeeper-bench >"$RUN_DIR/jwks.json.tmp"
    mv "$RUN_DIR/jwks.json.tmp" "$RUN_DIR/jwks.json"
  fi
  cp "$REPO_ROOT/bench/oathkeeper-rules.json" "$RUN_DIR/rules.json"
  sed -e "s|@PROXY_PORT@|$PROXY_PORT|g" -e "s|@API_PORT@|$API_PORT|g" \
      -e "s|@SESSION_URL@|$SESSION_URL|g" -e "s|@RUN_DIR@|$RUN_DIR|g" \
      -e "s|@LOG_LEVEL@|${OATHKEEPER_LOG_LEVEL:-warn}|g" \
      "$REPO_ROOT/bench/oathkeeper.yml" >"$RUN_DIR/oathkeeper.yml"
}

cmd_start() {
  if is_running; then log "already running (pid $(cat "$PID_FILE"))"; exit 1; fi
  local bin
  bin="$(cmd_build | tail -n1)"
  write_config
  log "starting oathkeeper (log: $RUN_DIR/oathkeeper.log)"
  nohup "$bin" serve --config "$RUN_DIR/oathkeeper.yml" --sqa-opt-out >"$RUN_DIR/oathkeeper.log" 2>&1 &
  echo $! >"$PID_FILE"
  local deadline=$((SECONDS + READY_TIMEOUT))
  until curl -fsS "http://127.0.0.1:$API_PORT/health/ready" >/dev/null 2>&1; do
    if ! is_running; then log "oathkeeper exited:"; tail -n 30 "$RUN_DIR/oathkeeper.log" >&2; rm -f "$PID_FILE"; exit 1; fi
    if (( SECONDS >= deadline )); then log "not ready after ${READY_TIMEOUT}s"; tail -n 30 "$RUN_DIR/oathkeeper.log" >&2; cmd_stop; exit 1; fi
    sleep 0.2
  done
  echo "decisions: http://127.0.0.1:$API_PORT/decisions"
  echo "pid:       $(cat "$PID_FILE") ($PID_FILE)"
}

cmd_stop() {
  if ! [[ -f "$PID_FILE" ]]; then log "not running (no pid file)"; return 0; fi
  local pid; pid="$(cat "$PID_FILE")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" || true
    log "stopped pid $pid"
  fi
  rm -f "$PID_FILE"
}

cmd_status() { if is_running; then echo "running (pid $(cat "$PID_FILE"))"; else echo "not running"; fi; }

case "${1:-}" in
  build) cmd_build ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 {build|start|stop|status}" >&2; exit 2 ;;
esac
