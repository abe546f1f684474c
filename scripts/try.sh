#!/usr/bin/env bash
# Try sessiongate with a real Ory Kratos in one command: builds Kratos (cached) and sessiongate,
# starts both on loopback, registers a demo user, prints commands to try, and stops both on Ctrl-C.
#
#   scripts/try.sh
#
# Ports: Kratos public 4433 / admin 4434, sessiongate gRPC 9191 / HTTP 9192.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${TRY_DIR:-$PWD/target/try}"
mkdir -p "$RUN_DIR"

export KRATOS_RUN_DIR="$RUN_DIR/kratos"
scripts/kratos.sh start >&2
trap 'scripts/kratos.sh stop >&2 || true; kill "${SG_PID:-0}" 2>/dev/null || true' EXIT INT TERM

cargo build --release --quiet
if [ ! -f "$RUN_DIR/jwks.json" ]; then
  target/release/sessiongate keys generate --alg ES256 --kid try-1 > "$RUN_DIR/jwks.json"
fi
SESSIONGATE_JWT__JWKS_FILE="$RUN_DIR/jwks.json" \
SESSIONGATE_JWT__CLAIMS='{email=/identity/traits/email}' \
SESSIONGATE_UPSTREAM__IDENTITY_HEADERS='{x-user-id=/identity/id}' \
SESSIONGATE_ADMIN__TOKEN="try-admin-token-0123456789" \
SESSIONGATE_LOG__FORMAT=pretty \
  target/release/sessiongate serve &
SG_PID=$!
for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:9192/health/ready >/dev/null 2>&1 && break
  sleep 0.1
done

# A demo user through Kratos' API registration flow: prints its session token.
flow=$(curl -fsS http://127.0.0.1:4433/self-service/registration/api)
action=$(printf '%s' "$flow" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ui"]["action"])')
email="demo-$RANDOM@example.com"
resp=$(curl -fsS -X POST -H 'Content-Type: application/json' "$action" \
  -d "{\"method\":\"password\",\"password\":\"correct-horse-battery-staple-42\",\"traits\":{\"email\":\"$email\",\"name\":{\"first\":\"Demo\",\"last\":\"User\"}}}")
TOKEN=$(printf '%s' "$resp" | python3 -c 'import json,sys; print(json.load(sys.stdin)["session_token"])')

cat <<TXT

sessiongate is running in front of a real Kratos. Demo user: $email
Session token: $TOKEN

Forward-auth over HTTP (what nginx/Traefik/Caddy call):
  curl -i http://127.0.0.1:9192/check/orders -H "X-Session-Token: $TOKEN"     # 200 + Authorization: Bearer <JWT>
  curl -i http://127.0.0.1:9192/check/orders                                   # 401
Public keys:
  curl -s http://127.0.0.1:9192/.well-known/jwks.json
Metrics (one whoami call per session per TTL):
  curl -s http://127.0.0.1:9192/metrics | grep whoami_requests
Envoy's gRPC Check with grpcurl (see docs/grpcurl.md):
  $(scripts/grpcurl.sh build) -plaintext 127.0.0.1:9191 grpc.health.v1.Health/Check
Revoke at once:
  target/release/sessiongate admin --token try-admin-token-0123456789 stats

Ctrl-C stops Kratos and sessiongate.
TXT
wait "$SG_PID"
