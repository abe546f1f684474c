#!/usr/bin/env bash
# Offline validation of the Kubernetes and Istio manifests.
#
#   scripts/validate-k8s.sh
#
# 1. Installs pinned tools into a cache (once):
#      kustomize            from the Go module proxy (go install), needs Go >= 1.22
#      kubernetes-validate  from PyPI into a venv (bundles the Kubernetes JSON schemas)
#    Cache: ${SESSIONGATE_CACHE_DIR:-$HOME/.cache/sessiongate}
# 2. Renders k8s/base and every k8s/overlays/* with kustomize and validates each rendered
#    object against the pinned Kubernetes versions' OpenAPI schemas with --strict
#    (unknown fields are errors).
# 3. Checks istio/*.yaml (CRDs, unknown to kubernetes-validate) with scripts/validate_istio.py.
# 4. Proves the checks can fail: fixtures under tests/fixtures/{k8s,istio}-broken/ MUST be
#    rejected, otherwise this script fails.
#
# Nothing is applied to a cluster. Exit status is non-zero on any failure.
set -euo pipefail

KUSTOMIZE_VERSION=v5.8.1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SESSIONGATE_CACHE_DIR:-$HOME/.cache/sessiongate}"
BIN="$CACHE/bin"
KUSTOMIZE="$BIN/kustomize-$KUSTOMIZE_VERSION"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

log() { printf '==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
# shellcheck source=lib/kubevalidate.sh
source "$ROOT/scripts/lib/kubevalidate.sh"

# ── tools ──────────────────────────────────────────────────────────────────────
mkdir -p "$BIN"
if [[ ! -x "$KUSTOMIZE" ]]; then
  command -v go >/dev/null || fail "go is required to install kustomize"
  log "installing kustomize $KUSTOMIZE_VERSION (go install, one-off)"
  # Module and build caches inside our cache dir: self-contained, safe to delete.
  GOBIN="$WORK/gobin" GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" \
    GOFLAGS=-modcacherw GOTOOLCHAIN=local \
    go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  mv "$WORK/gobin/kustomize" "$KUSTOMIZE"
fi
kv_install
PY="$KV_PY"

# ── Kubernetes manifests ───────────────────────────────────────────────────────
targets=("$ROOT/k8s/base")
for d in "$ROOT"/k8s/overlays/*/; do targets+=("${d%/}"); done
for t in "${targets[@]}"; do
  name="${t#"$ROOT"/}"
  out="$WORK/$(echo "$name" | tr / _).yaml"
  log "kustomize build $name"
  "$KUSTOMIZE" build "$t" > "$out" || fail "kustomize build $name"
  kinds="$(grep -c '^kind:' "$out" || true)"
  log "kubernetes-validate --strict ($kinds objects, k8s ${K8S_VERSIONS[*]}) $name"
  kv_validate "$out" || fail "schema validation of $name"
done

# ── Istio CRs ──────────────────────────────────────────────────────────────────
log "validate_istio.py istio/*.yaml"
"$PY" "$ROOT/scripts/validate_istio.py" "$ROOT"/istio/*.yaml || fail "istio manifests"

# ── the checks must be able to fail ────────────────────────────────────────────
log "negative: tests/fixtures/k8s-broken must be rejected (by every pinned version)"
for v in "${K8S_VERSIONS[@]}"; do
  if "$KV" --strict --quiet -k "$v" "$ROOT"/tests/fixtures/k8s-broken/*.yaml > "$WORK/neg-k8s.log" 2>&1; then
    cat "$WORK/neg-k8s.log"; fail "broken Kubernetes fixture was accepted by $v"
  fi
  grep -q "readinesProbe" "$WORK/neg-k8s.log" \
    || { cat "$WORK/neg-k8s.log"; fail "k8s fixture rejected for an unexpected reason ($v)"; }
done

log "negative: tests/fixtures/istio-broken must be rejected"
if "$PY" "$ROOT/scripts/validate_istio.py" "$ROOT/istio/mesh-config.yaml" \
     "$ROOT"/tests/fixtures/istio-broken/*.yaml > "$WORK/neg-istio.log" 2>&1; then
  cat "$WORK/neg-istio.log"; fail "broken Istio fixture was accepted"
fi
for reason in "notPath" "not a declared extensionProvider" "unknown field 'jwks_uri'" \
              "is not sessiongate's <base>/.well-known/jwks.json" "not declared by a RequestAuthentication"; do
  grep -qF -- "$reason" "$WORK/neg-istio.log" \
    || { cat "$WORK/neg-istio.log"; fail "istio fixtures not rejected for: $reason"; }
done

log "all Kubernetes/Istio manifests valid (schema only; nothing applied to a cluster)"
