#!/usr/bin/env bash
# Offline validation of the Helm chart charts/sessiongate.
#
#   scripts/validate-helm.sh
#
# 1. Tools (cached under ${SESSIONGATE_CACHE_DIR:-$HOME/.cache/sessiongate}, built once):
#      helm                 scripts/helm.sh build (pinned, from the Go module proxy)
#      kubernetes-validate  scripts/lib/kubevalidate.sh (the same pinned validator as validate-k8s.sh)
#      ServiceMonitor CRD   from the prometheus-operator Go module (go mod download, pinned)
# 2. `helm lint --strict` with the default values and with every charts/sessiongate/ci/*.yaml.
# 3. `helm template` with the default values and every ci/*.yaml; each render is validated with
#    kubernetes-validate --strict against the pinned Kubernetes versions (a kind without a
#    schema is an error), and ServiceMonitor objects against the Prometheus Operator CRD's
#    schema (scripts/validate_crd.py, strict). The default render must match k8s/base
#    (scripts/chart_matches_base.py: probes, security context, ports, resources, config...).
# 4. Proves the checks can fail: each tests/fixtures/helm-broken/ case MUST be rejected for
#    its stated reason, otherwise this script fails.
#
# Env: SESSIONGATE_CACHE_DIR, SESSIONGATE_HELM_BIN (see scripts/helm.sh),
#      PROMETHEUS_OPERATOR_VERSION (module version holding the ServiceMonitor CRD).
# Nothing is installed into a cluster. Exit status is non-zero on any failure.
set -euo pipefail

# The newest version `go list -m -versions github.com/prometheus-operator/prometheus-operator` lists.
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
PROMETHEUS_OPERATOR_MODULE=github.com/prometheus-operator/prometheus-operator

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SESSIONGATE_CACHE_DIR:-$HOME/.cache/sessiongate}"
CHART="$ROOT/charts/sessiongate"
BROKEN="$ROOT/tests/fixtures/helm-broken"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS

log() { printf '==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
# shellcheck source=lib/kubevalidate.sh
source "$ROOT/scripts/lib/kubevalidate.sh"
# shellcheck source=lib/gobuild.sh
source "$ROOT/scripts/lib/gobuild.sh"

# ── tools ──────────────────────────────────────────────────────────────────────
HELM="$("$ROOT/scripts/helm.sh" build | tail -n1)"
kv_install
CRD="$CACHE/crds/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION/monitoring.coreos.com_servicemonitors.yaml"
if [[ ! -f "$CRD" ]]; then
  command -v go >/dev/null || fail "go is required to fetch the ServiceMonitor CRD"
  log "fetching the ServiceMonitor CRD from $PROMETHEUS_OPERATOR_MODULE@$PROMETHEUS_OPERATOR_VERSION (go mod download, one-off)"
  dir="$(gomod_field "$PROMETHEUS_OPERATOR_MODULE" "$PROMETHEUS_OPERATOR_VERSION" Dir)"
  src="$dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
  [[ -f "$src" ]] || fail "no ServiceMonitor CRD at $src"
  mkdir -p "$(dirname "$CRD")"
  cp "$src" "$CRD.tmp.$$" && mv "$CRD.tmp.$$" "$CRD"
fi
# ServiceMonitor has no Kubernetes schema: kv_validate lets it through, validate_crd.py checks it.
export KV_SCHEMALESS_KINDS=ServiceMonitor

# render NAME [helm template args...]: prints the path of the rendered manifest.
render() {
  local name=$1; shift
  local out="$WORK/$name.yaml"
  "$HELM" template sessiongate "$CHART" --namespace sessiongate "$@" > "$out" || return 1
  echo "$out"
}

# ── the chart ──────────────────────────────────────────────────────────────────
variants=(default)
for f in "$CHART"/ci/*.yaml; do variants+=("$(basename "$f" .yaml)"); done
for v in "${variants[@]}"; do
  args=()
  [[ "$v" == default ]] || args=(-f "$CHART/ci/$v.yaml")
  log "helm lint --strict ($v values)"
  "$HELM" lint --strict --namespace sessiongate "$CHART" "${args[@]}" > "$WORK/lint.log" 2>&1 \
    || { cat "$WORK/lint.log"; fail "helm lint ($v values)"; }
  out="$(render "$v" "${args[@]}")" || fail "helm template ($v values)"
  kinds="$(grep '^kind:' "$out" | sed 's/kind: //' | sort | tr '\n' ' ')"
  log "kubernetes-validate --strict (k8s ${K8S_VERSIONS[*]}) $v render: $kinds"
  kv_validate "$out" || fail "schema validation of the $v render"
  if grep -q '^kind: ServiceMonitor' "$out"; then
    log "validate_crd.py ServiceMonitor ($v render) against the Prometheus Operator $PROMETHEUS_OPERATOR_VERSION CRD"
    "$KV_PY" "$ROOT/scripts/validate_crd.py" "$CRD" "$out" || fail "ServiceMonitor in the $v render"
  fi
done
grep -q '^kind: ServiceMonitor' "$WORK"/*.yaml || fail "no variant renders the ServiceMonitor (ci/servicemonitor-values.yaml?)"
log "chart_matches_base.py: default render vs k8s/base"
"$KV_PY" "$ROOT/scripts/chart_matches_base.py" "$ROOT/k8s/base" "$WORK/default.yaml" || fail "chart defaults drifted from k8s/base"

# ── the checks must be able to fail ────────────────────────────────────────────
# expect_reason WHAT LOG PATTERN: the command that wrote LOG has failed; LOG must mention PATTERN.
expect_reason() {
  grep -q -- "$3" "$2" || { cat "$2"; fail "$1 rejected for an unexpected reason (wanted: $3)"; }
}

log "negative: helm lint must reject tests/fixtures/helm-broken/schema-values.yaml (values.schema.json)"
if "$HELM" lint --strict "$CHART" -f "$BROKEN/schema-values.yaml" > "$WORK/neg.log" 2>&1; then
  cat "$WORK/neg.log"; fail "schema-values.yaml was accepted"
fi
expect_reason schema-values.yaml "$WORK/neg.log" "/replicaCount"
expect_reason schema-values.yaml "$WORK/neg.log" "jwtt"

log "negative: probe-typo-values.yaml renders, and its render must be rejected (periodSecond)"
out="$(render probe-typo -f "$BROKEN/probe-typo-values.yaml")" || fail "probe-typo-values.yaml should render"
if kv_validate "$out" > "$WORK/neg.log" 2>&1; then
  cat "$WORK/neg.log"; fail "the render of probe-typo-values.yaml was accepted"
fi
expect_reason probe-typo-values.yaml "$WORK/neg.log" "periodSecond"

log "negative: removed-api.yaml (a kind without a schema) must be rejected"
if kv_validate "$BROKEN/removed-api.yaml" > "$WORK/neg.log" 2>&1; then
  cat "$WORK/neg.log"; fail "removed-api.yaml was accepted"
fi
expect_reason removed-api.yaml "$WORK/neg.log" "schema for kind PodDisruptionBudget"

log "negative: servicemonitor.yaml must be rejected by the CRD schema"
if "$KV_PY" "$ROOT/scripts/validate_crd.py" "$CRD" "$BROKEN/servicemonitor.yaml" > "$WORK/neg.log" 2>&1; then
  cat "$WORK/neg.log"; fail "servicemonitor.yaml was accepted"
fi
expect_reason servicemonitor.yaml "$WORK/neg.log" "'scrapeInterval' was unexpected"
expect_reason servicemonitor.yaml "$WORK/neg.log" "'gopher' is not one of"

log "chart valid: lint, ${#variants[@]} renders (${variants[*]}) against the schemas; broken fixtures rejected ($((SECONDS - START)) s)"
