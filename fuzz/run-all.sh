#!/usr/bin/env bash
# Runs every fuzz target (whatever `cargo fuzz list` names) for SECONDS each (default 300), or
# until RUNS executions when the second argument is given, whichever comes first; the corpus is
# kept in fuzz/corpus/. Usage: fuzz/run-all.sh [SECONDS] [RUNS]
# Needs cargo-fuzz (`cargo install cargo-fuzz`). On a stable toolchain, RUSTC_BOOTSTRAP=1 lets
# cargo-fuzz pass its instrumentation flags; `-s none` skips the sanitizer runtime, which only
# nightly ships. Findings land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-300}"
runs="${2:--1}"
export RUSTC_BOOTSTRAP=1
for t in $(cargo fuzz list); do
  echo "== $t ($seconds s)"
  cargo fuzz run -s none "$t" -- -max_total_time="$seconds" -runs="$runs" -rss_limit_mb=2048 2>&1 | grep -E '^(#[0-9]+.*(DONE|pulse)|Done|==|SUMMARY|panicked)' | tail -3
done
