#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that read untrusted bytes (fuzz/fuzz_targets/*):
# libFuzzer through cargo-fuzz on the stable toolchain, without a sanitizer (`-s none`; see
# ../shared/FUZZ.md and docs/reliability.md), debug assertions on (overflow checks).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 60 s each, every target
#
# cargo-fuzz is installed once under ${TMPDIR:-/tmp}/modelpress-fuzz-tools; the fuzz build has
# its own target dir under ${TMPDIR:-/tmp}. Each target starts from its committed seeds
# (fuzz/seeds/<target>, never modified) plus a working corpus under ${TMPDIR:-/tmp}; committed
# crash reproducers (fuzz/regressions/<target>/*) are replayed first. A crash leaves its input
# under fuzz/artifacts/<target>/ and makes the script exit 1. Prints executions per target.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-60}"
shift || true
BASE="${TMPDIR:-/tmp}"
TOOLS="$BASE/modelpress-fuzz-tools"
TARGET_DIR="$BASE/modelpress-fuzz-target"
CORPUS="$BASE/modelpress-fuzz-corpus"
if [ ! -x "$TOOLS/bin/cargo-fuzz" ]; then
  echo "== installing cargo-fuzz into $TOOLS (once)"
  cargo install cargo-fuzz --locked --quiet --root "$TOOLS"
fi
export PATH="$TOOLS/bin:$PATH"
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
opts=(--fuzz-dir fuzz -s none -a --target-dir "$TARGET_DIR")
echo "== building ${#targets[@]} fuzz targets"
cargo fuzz build "${opts[@]}"
status=0
printf '%-20s %12s %10s %s\n' target executions exec/s result
for t in "${targets[@]}"; do
  mkdir -p "$CORPUS/$t" "fuzz/seeds/$t"
  if [ -d "fuzz/regressions/$t" ] && [ -n "$(ls -A "fuzz/regressions/$t")" ]; then
    cargo fuzz run "${opts[@]}" "$t" fuzz/regressions/$t/* -- -runs=0 >/dev/null 2>&1 || {
      echo "!! $t: a committed regression input crashes again" >&2
      status=1
    }
  fi
  log="$CORPUS/$t.log"
  if cargo fuzz run "${opts[@]}" "$t" "$CORPUS/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$SECS" -print_final_stats=1 -rss_limit_mb=2048 -max_len=65536 >"$log" 2>&1; then
    result=ok
  else
    result="CRASH (see $log, input under fuzz/artifacts/$t/)"
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  printf '%-20s %12s %10s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$result"
done
exit "$status"
