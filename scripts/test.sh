#!/usr/bin/env bash
# The project's test command: installs what the tests need when it is missing, then runs every
# test. Used by `.ci/run` and by developers alike.
#
#   scripts/test.sh            # everything
#   scripts/test.sh --lib      # extra args go to `cargo test`
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

# Kubernetes / Istio manifests against the real schemas (kustomize + kubernetes-validate, cached).
if [ $# -eq 0 ]; then
  scripts/validate-k8s.sh
fi

exec cargo test --all-targets "$@"
