#!/usr/bin/env bash
# The project's test command: installs what the tests need when it is missing, then runs every
# test. Used by `.ci/run` and by developers alike.
#
#   scripts/test.sh            # everything
#   scripts/test.sh --lib      # extra args go to `cargo test`
#
# Fails, naming them, when a process the tests started (nginx, redis-server, kratos, a
# sessiongate binary, ...) is still alive after `cargo test` has exited.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages used by tests (real proxies and servers, started on loopback by the tests).
need=()
for bin in nginx redis-server; do
  command -v "$bin" >/dev/null 2>&1 || need+=("$bin")
done
if ((${#need[@]})); then
  pkgs=()
  for b in "${need[@]}"; do
    case "$b" in
      nginx) pkgs+=(nginx-light) ;;
      redis-server) pkgs+=(redis-server) ;;
    esac
  done
  echo "test.sh: installing ${pkgs[*]}" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# Real Ory Kratos, built from source through the Go module proxy (cached after the first build).
if [ -x scripts/kratos.sh ]; then
  scripts/kratos.sh build >/dev/null
fi
# Real Ory Hydra (OAuth2 tokens, JWKS, introspection), built the same way (cached).
if [ -x scripts/hydra.sh ]; then
  scripts/hydra.sh build >/dev/null
fi
# grpcurl, the independent gRPC client of tests/grpcurl_e2e.rs (Go module proxy, cached).
if [ -x scripts/grpcurl.sh ]; then
  scripts/grpcurl.sh build >/dev/null
fi

# Kubernetes / Istio manifests against the real schemas (kustomize + kubernetes-validate, cached),
# the Helm chart (helm from the Go module proxy, cached; same schemas), and Envoy's own
# protoc-gen-validate rules for envoy/*.yaml (tools/envoy-validate, cached).
if [ $# -eq 0 ]; then
  scripts/validate-k8s.sh
  scripts/validate-helm.sh
  scripts/envoy-validate.sh ci
fi

# Every crate of the workspace: the product, bench/ and crates/testkit.
# Every target unless the arguments pick some (`scripts/test.sh --test nginx_e2e`).
targets=(--all-targets)
for a in "$@"; do
  case "$a" in
    --lib|--bins|--bin|--bin=*|--tests|--test|--test=*|--examples|--example|--example=*|\
    --benches|--bench|--bench=*|--doc|--all-targets) targets=() ;;
  esac
done
# cargo runs in a session of its own and with this run's marker in its environment; every
# process the tests start inherits both (nginx workers drop the environment but keep the
# session; a process that starts its own session keeps the environment). What still has either
# once cargo has exited was left behind by a test. (The marker is not SESSIONGATE_*: sessiongate
# reads those as configuration and rejects unknown ones.)
run_id="$$-$(date +%s%N)"
set +e
# `env --default-signal`: a background job of a script starts with SIGINT and SIGQUIT ignored.
TEST_SH_RUN="$run_id" setsid env --default-signal=INT,QUIT \
  cargo test --workspace "${targets[@]}" "$@" &
cargo_pid=$!  # also the session id: setsid execs in place (a background job leads no group)
trap 'kill -INT -- "-$cargo_pid" 2>/dev/null' INT TERM
wait "$cargo_pid"
status=$?
while kill -0 "$cargo_pid" 2>/dev/null; do  # a trapped signal interrupted `wait`
  wait "$cargo_pid"
  status=$?
done
trap - INT TERM
set -e

# Live processes of this run (zombies are not alive; their environ reads empty).
leftovers() {
  {
    ps -eo pid=,sid=,stat= | awk -v sid="$cargo_pid" '$2 == sid && $3 !~ /^Z/ { print $1 }'
    grep -lzxF "TEST_SH_RUN=$run_id" /proc/[0-9]*/environ 2>/dev/null |
      sed -n 's|^/proc/\([0-9]*\)/environ$|\1|p'
  } | sort -un
}
left=()
for _ in $(seq 20); do  # ~2 s of grace for processes still shutting down
  mapfile -t left < <(leftovers)
  ((${#left[@]})) || break
  sleep 0.1
done
if ((${#left[@]})); then
  echo "test.sh: ${#left[@]} process(es) started by the tests outlived them:" >&2
  ps -o pid=,ppid=,etime=,args= -p "$(IFS=,; echo "${left[*]}")" >&2 || true
  kill -KILL "${left[@]}" 2>/dev/null || true
  ((status != 0)) || status=1
fi
exit "$status"
