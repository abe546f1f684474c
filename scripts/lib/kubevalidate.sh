# Shared by scripts/validate-k8s.sh and scripts/validate-helm.sh (sourced, not run): the pinned
# kubernetes-validate (PyPI, in a venv under the cache; it bundles the Kubernetes JSON schemas,
# so validation is offline) and the strict check against every pinned Kubernetes version.
# The sourcing script defines CACHE (the cache dir), `log` and `fail`.

KUBERNETES_VALIDATE_VERSION=1.35.0
# Oldest supported (preStop `sleep` needs >= 1.30) and newest schema bundled above.
K8S_VERSIONS=(1.31.0 1.35.0)
KV_VENV="$CACHE/venv-kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
KV="$KV_VENV/bin/kubernetes-validate"
KV_PY="$KV_VENV/bin/python"   # has PyYAML and jsonschema (dependencies of kubernetes-validate)

# kv_install: creates the venv once.
kv_install() {
  [[ -x "$KV" ]] && return 0
  log "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION (pip, one-off)"
  rm -rf "$KV_VENV"
  python3 -m venv "$KV_VENV"
  "$KV_VENV/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
}

# kv_validate FILE...: strict (unknown fields are errors) against every pinned version; fails if
# any version rejects, or if a kind has no schema (kubernetes-validate only warns about those,
# e.g. a removed apiVersion) unless the kind is listed in KV_SCHEMALESS_KINDS (CRDs checked
# elsewhere). (Explicit `|| return`: `set -e` is ignored in functions called from `if`/`||`.)
kv_validate() {
  local v out line kind ok k
  for v in "${K8S_VERSIONS[@]}"; do
    out="$("$KV" --strict --quiet -k "$v" "$@" 2>&1)" || { printf '%s\n' "$out"; return 1; }
    while IFS= read -r line; do
      [[ "$line" == *"Couldn't find schema for kind "* ]] || continue
      kind="${line#*Couldn\'t find schema for kind }"; kind="${kind%% *}"
      ok=0
      for k in ${KV_SCHEMALESS_KINDS:-}; do [[ "$k" == "$kind" ]] && ok=1; done
      ((ok)) || { printf '%s\n' "$out"; echo "no Kubernetes $v schema for kind $kind" >&2; return 1; }
    done <<<"$out"
  done
}
