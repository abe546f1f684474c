#!/usr/bin/env bash
# Build (or reuse) a pinned Helm 3 from the Go module proxy, for validating charts/sessiongate
# (scripts/validate-helm.sh) and for installing the chart by hand.
#
#   scripts/helm.sh build     -> builds (or reuses) the pinned helm; last stdout line = binary path
#   scripts/helm.sh version   -> prints the pinned version
#   scripts/helm.sh -- ARGS   -> builds if needed, then runs `helm ARGS`
#
# Env: SESSIONGATE_HELM_BIN (use this binary, skip the build),
#      SESSIONGATE_CACHE_DIR (default ~/.cache/sessiongate), HELM_VERSION (default: the pin below).
set -euo pipefail

# Pinned version: the newest v3 release `go list -m -versions helm.sh/helm/v3` lists.
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
HELM_MODULE="helm.sh/helm/v3"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${SESSIONGATE_CACHE_DIR:-$HOME/.cache/sessiongate}"
BIN_DIR="$CACHE_DIR/helm-$HELM_VERSION"
BIN="$BIN_DIR/helm"

log() { echo "helm.sh: $*" >&2; }
# shellcheck source=lib/gobuild.sh
source "$REPO_ROOT/scripts/lib/gobuild.sh"

cmd_build() {
  gobuild_cached helm "$BIN" "${SESSIONGATE_HELM_BIN:-}" && return 0
  local work start=$SECONDS mod major minor
  work="$(mktemp -d "$CACHE_DIR/helm-build.XXXXXX")"
  # Helm's Makefile stamps the Kubernetes version it was built against (client-go v0.X.Y means
  # Kubernetes 1.X) into the default .Capabilities.KubeVersion and the deprecation lint rules.
  mod="$(gomod_field "$HELM_MODULE" "$HELM_VERSION" GoMod)"
  minor="$(sed -n 's/^[[:space:]]*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$mod")"
  [[ -n "$minor" ]] || { gobuild_cleanup "$work"; log "no k8s.io/client-go in $mod"; exit 1; }
  major=1
  local ldflags="-s -w -X $HELM_MODULE/internal/version.version=$HELM_VERSION"
  ldflags+=" -X $HELM_MODULE/internal/version.gitTreeState=clean"
  for pkg in pkg/lint/rules pkg/chartutil; do
    ldflags+=" -X $HELM_MODULE/$pkg.k8sVersionMajor=$major -X $HELM_MODULE/$pkg.k8sVersionMinor=$minor"
  done
  log "building $HELM_MODULE/cmd/helm@$HELM_VERSION (Kubernetes $major.$minor) via the Go module proxy"
  # No replace directives in helm's go.mod: `go install mod@ver` works directly.
  # GOTOOLCHAIN=local: use the installed Go, never download a toolchain.
  # CGO_ENABLED=0: a static binary, no C compiler needed.
  if ! (GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$work" \
        go install -trimpath -ldflags "$ldflags" "$HELM_MODULE/cmd/helm@$HELM_VERSION") >&2; then
    gobuild_cleanup "$work"
    log "go install failed (see above)"
    exit 1
  fi
  gobuild_install "$work/helm" "$BIN" "$start"
  gobuild_cleanup "$work"
}

case "${1:-}" in
  build) cmd_build ;;
  version) echo "$HELM_VERSION" ;;
  --) shift; bin="$(cmd_build | tail -n1)"; exec "$bin" "$@" ;;
  *) echo "usage: $0 {build|version|-- HELM-ARGS...}" >&2; exit 2 ;;
esac
