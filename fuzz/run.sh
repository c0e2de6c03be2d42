#!/usr/bin/env bash
# Run every fuzz target (or those named) for a bounded time each, on the stable toolchain:
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]        (default 15 s, all four targets)
# Builds unoptimised (quick to compile, as CI wants) unless WARREN_FUZZ_PROFILE=release (what a
# long run wants), into ~/.cache/warren-fuzz/target (WARREN_FUZZ_TARGET_DIR) so that a machine
# that ran it before builds only what changed.
# Installs cargo-fuzz (cargo install --locked, about 70 s once) if it is missing. Prints a
# "fuzz: skipped" line and exits 0 when the toolchain cannot fuzz at all (no C++ compiler to
# build libFuzzer with, a cargo-fuzz that does not install); exits non-zero when the targets do
# not build (a broken target is a defect, not a reason to skip) or a target finds a crash,
# leaving the input in fuzz/artifacts/<target>/. The checked-in corpus is only read: new inputs go to a
# temporary directory. See fuzz/README.md.
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-15}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame content_header field_table connection)
CARGO_FUZZ_VERSION=0.13.2

skip() { echo "fuzz: skipped: $*"; exit 0; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  command -v c++ >/dev/null 2>&1 || skip "no C++ compiler to build libFuzzer with"
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  start=$SECONDS
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION" \
    || skip "cargo install cargo-fuzz failed"
  echo "fuzz: cargo-fuzz installed in $((SECONDS - start)) s"
fi

# --sanitizer none: AddressSanitizer needs nightly (-Zsanitizer); the coverage instrumentation
# libFuzzer needs (-Cpasses=sancov-module and LLVM options) works on stable. Safe Rust needs no
# ASan to find what matters here: panics, aborts, hangs, stack overflows, runaway memory.
# Debug assertions and overflow checks are on in both profiles.
flags=(--sanitizer none --target-dir "${WARREN_FUZZ_TARGET_DIR:-$HOME/.cache/warren-fuzz/target}")
[ "${WARREN_FUZZ_PROFILE:-dev}" = release ] || flags+=(--dev)
start=$SECONDS
build_log=$(mktemp)
if ! cargo fuzz build "${flags[@]}" >"$build_log" 2>&1; then
  tail -n 30 "$build_log"
  rm -f "$build_log"
  echo "fuzz: FAILED: the fuzz targets do not build (output above)"
  exit 1
fi
rm -f "$build_log"
echo "fuzz: targets built in $((SECONDS - start)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "artifacts/$t"
  # The connection target runs a broker per input: give it time and memory per input.
  extra=()
  [ "$t" = connection ] && extra=(-timeout=30 -rss_limit_mb=4096 -max_len=4096)
  if cargo fuzz run "${flags[@]}" "$t" "$work/$t" "corpus/$t" -- \
      -max_total_time="$secs" -print_final_stats=1 "${extra[@]}" >"$work/$t.log" 2>&1; then
    stats=$(grep -E '^stat::(number_of_executed_units|new_units_added)' "$work/$t.log" | tr '\n' ' ' | tr -s ' ')
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$work/$t.log" | tail -1)
    echo "fuzz: $t: ok for ${secs}s: $cov $stats"
  else
    tail -n 40 "$work/$t.log"
    echo "fuzz: $t: FAILED (input in fuzz/artifacts/$t/)"
    failed+=("$t")
  fi
done
[ ${#failed[@]} -eq 0 ] || { echo "fuzz: failures in: ${failed[*]}"; exit 1; }
