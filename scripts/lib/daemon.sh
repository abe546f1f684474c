# Shared by scripts/kratos.sh and scripts/hydra.sh (sourced, not run): a background server
# started from a script, tracked by a pid file. The sourcing script defines `log`.

# daemon_is_running PID_FILE: true while the recorded process lives.
daemon_is_running() {
  [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# daemon_wait_ready PID_FILE URL LOG TIMEOUT: polls URL until it answers 2xx; on the process
# exiting or TIMEOUT seconds passing, shows the log tail, stops it and fails.
daemon_wait_ready() {
  local pid_file=$1 url=$2 log_file=$3 timeout=$4
  local deadline=$((SECONDS + timeout))
  until curl -fsSL "$url" >/dev/null 2>&1; do
    if ! daemon_is_running "$pid_file"; then
      log "exited:"; tail -n 30 "$log_file" >&2; rm -f "$pid_file"; exit 1
    fi
    if (( SECONDS >= deadline )); then
      log "not ready after ${timeout}s"; tail -n 30 "$log_file" >&2; daemon_stop "$pid_file"; exit 1
    fi
    sleep 0.2
  done
}

# daemon_stop PID_FILE: SIGTERM, up to 5 s of grace, then SIGKILL.
daemon_stop() {
  local pid_file=$1
  if ! [[ -f "$pid_file" ]]; then log "not running (no pid file)"; return 0; fi
  local pid; pid="$(cat "$pid_file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" || true
    log "stopped pid $pid"
  fi
  rm -f "$pid_file"
}

# daemon_status PID_FILE
daemon_status() {
  if daemon_is_running "$1"; then echo "running (pid $(cat "$1"))"; else echo "not running"; fi
}
