# Shared by scripts/kratos.sh, hydra.sh, oathkeeper.sh, grpcurl.sh, helm.sh, envoy-validate.sh
# and validate-helm.sh (sourced, not run):
# building a pinned Go tool from the Go module proxy into a per-version cache, once.
# The sourcing script defines `log` (its own message prefix).

# gobuild_cached NAME BIN OVERRIDE
# Prints the binary to use and returns 0 when OVERRIDE (a user-supplied binary) is set or BIN is
# already built. Otherwise takes the build lock (several test binaries may ask at once; held on
# fd 9 until the script exits), re-checks the cache, checks for `go`, and returns 1: build it.
gobuild_cached() {
  local name=$1 bin=$2 override=$3
  if [[ -n "$override" ]]; then
    [[ -x "$override" ]] || { log "$override (given for $name) is not executable"; exit 1; }
    log "using $override"
    echo "$override"
    return 0
  fi
  if [[ -x "$bin" ]]; then
    log "cached $bin"
    echo "$bin"
    return 0
  fi
  mkdir -p "$(dirname "$bin")"
  if command -v flock >/dev/null; then
    exec 9>"$(dirname "$(dirname "$bin")")/$name-build.lock"
    flock 9
    if [[ -x "$bin" ]]; then
      log "cached $bin (built by a concurrent run)"
      echo "$bin"
      return 0
    fi
  fi
  command -v go >/dev/null || { log "go not found in PATH ($name is built from the Go module proxy)"; exit 1; }
  return 1
}

# gomod_field MODULE VERSION FIELD
# Downloads MODULE@VERSION through the Go module proxy (once; Go caches it) and prints FIELD of
# `go mod download -json` (Dir = the extracted module, GoMod = its go.mod).
gomod_field() {
  local module=$1 version=$2 field=$3 json value
  if ! json="$(go mod download -json "$module@$version")"; then
    log "go mod download failed: $json"
    exit 1
  fi
  value="$(printf '%s\n' "$json" | sed -n "s/^[[:space:]]*\"$field\": \"\(.*\)\",\{0,1\}\$/\1/p")"
  [[ -n "$value" && -e "$value" ]] || { log "no $field in: $json"; exit 1; }
  echo "$value"
}

# gobuild_source MODULE VERSION WORK
# Downloads MODULE@VERSION through the Go module proxy and copies it, writable, to WORK/src:
# `go install mod@ver` refuses modules with replace directives, so they are built in a copy.
gobuild_source() {
  local module=$1 version=$2 work=$3 dir
  log "downloading $module@$version via the Go module proxy"
  dir="$(gomod_field "$module" "$version" Dir)"
  cp -r "$dir" "$work/src"
  chmod -R u+w "$work/src"
}

# gobuild_install BUILT BIN START: moves a fresh build into the cache atomically, prints BIN.
gobuild_install() {
  local built=$1 bin=$2 start=$3
  [[ -x "$built" ]] || { log "the build produced no binary at $built"; exit 1; }
  mv "$built" "$bin.tmp.$$"
  mv "$bin.tmp.$$" "$bin"
  log "built $bin in $((SECONDS - start)) s"
  echo "$bin"
}

# gobuild_cleanup WORK: removes a build directory (module copies are read-only until chmod).
gobuild_cleanup() {
  chmod -R u+w "$1" 2>/dev/null || true
  rm -rf "$1"
}
