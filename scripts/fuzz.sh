#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ briefly: scripts/fuzz.sh [seconds-per-target] [target…]
#
# Needs a nightly toolchain and cargo-fuzz; installs cargo-fuzz from crates.io when missing.
# Environment: FUZZ_DEV=1 (unoptimised build: builds in a third of the time, runs slower; CI uses
# it), FUZZ_SANITIZER (default none: the crate forbids unsafe code, so ASan mostly costs
# build time; use address to include it), FUZZ_JOBS (default 1), FUZZ_CHECK_SECRET_ECHO=1 (also
# fail the config target when an error message echoes a secret).
# Crashes are written to fuzz/artifacts/<target>/; the corpus grows in fuzz/corpus/<target>/.
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${1:-20}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(cookies extract to_request config)
fi
sanitizer="${FUZZ_SANITIZER:-none}"
jobs="${FUZZ_JOBS:-1}"
profile=()
if [ "${FUZZ_DEV:-0}" = 1 ]; then
    profile=(--dev)
fi

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: installing the nightly toolchain (cargo-fuzz needs it)" >&2
    rustup toolchain install nightly --profile minimal || {
        echo "fuzz.sh: no nightly toolchain available; the stable property tests" \
             "(cargo test --test proptest_parsing) cover the same surfaces" >&2
        exit 2
    }
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

cargo +nightly fuzz build "${profile[@]}" --fuzz-dir fuzz -s "$sanitizer"
parallel=()
if [ "$jobs" -gt 1 ]; then
    parallel=(-jobs="$jobs" -workers="$jobs")
fi

status=0
for t in "${targets[@]}"; do
    echo "=== fuzz target $t: ${seconds}s ===" >&2
    mkdir -p "fuzz/corpus/$t"
    if ! cargo +nightly fuzz run "${profile[@]}" --fuzz-dir fuzz -s "$sanitizer" "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" "${parallel[@]}" -max_len=65536 \
        -print_final_stats=1; then
        echo "fuzz.sh: target $t FAILED (see fuzz/artifacts/$t/)" >&2
        status=1
    fi
done
exit $status
