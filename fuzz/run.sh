#!/usr/bin/env bash
# Usage: fuzz/run.sh SECONDS [TARGET...]
#
# Runs each fuzz target (all of them by default) for SECONDS, one after the
# other, with cargo +nightly fuzz (ASan), or stable `cargo fuzz run -s none`
# when there is no nightly. Installs cargo-fuzz if it is missing. The
# committed seeds in corpus/TARGET and the crash reproducers in
# regressions/TARGET are read first; crashes are written to
# artifacts/TARGET. Prints the executions, exec/s, corpus size and crashes
# of each target; exits non-zero if any crashed.
#
# The corpus grown by the runs goes to $FUZZ_CORPUS/TARGET (default
# fuzz/target/corpus/TARGET, not committed).
#
# KEEP_GOING=1 runs libFuzzer in fork mode with -ignore_crashes=1: it goes
# on after a crash (saving each to artifacts/) for the whole time, for
# finding more than the first crash. Logs go to $FUZZ_LOG_DIR (default /tmp)
# as fuzz-TARGET.log.
set -uo pipefail
cd "$(dirname "$0")"

if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
fi
seconds=$1
shift

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
    cargo install cargo-fuzz --locked || { echo "cannot install cargo-fuzz" >&2; exit 2; }
fi
if cargo +nightly --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz run)
    build=(cargo +nightly fuzz build)
    mode="nightly, ASan"
else
    fuzz=(cargo fuzz run -s none)
    build=(cargo fuzz build -s none)
    mode="stable, no sanitizer"
fi
triple=$(rustc -vV | sed -n 's/^host: //p')

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
logs=${FUZZ_LOG_DIR:-/tmp}
mkdir -p "$logs"

extra=()
if [ "${KEEP_GOING:-0}" = 1 ]; then
    extra=(-fork=1 -ignore_crashes=1)
fi

failed=0
summary=()
for t in "${targets[@]}"; do
    # The growing corpus lives outside git; the committed seeds and the
    # crash reproducers are read-only inputs.
    work="${FUZZ_CORPUS:-target/corpus}/$t"
    mkdir -p "$work" "artifacts/$t"
    dirs=("$work" "corpus/$t")
    if [ -d "regressions/$t" ] && [ -n "$(ls -A "regressions/$t" 2>/dev/null)" ]; then
        dirs+=("regressions/$t")
    fi
    log="$logs/fuzz-$t.log"
    before=$(ls "artifacts/$t" | wc -l)
    echo "== $t: ${seconds}s ($mode) log: $log"
    start=$(date +%s)
    if [ ${#extra[@]} -eq 0 ]; then
        "${fuzz[@]}" "$t" "${dirs[@]}" -- -max_total_time="$seconds" -print_final_stats=1 \
            >"$log" 2>&1
        rc=$?
    else
        # Fork mode: run the built binary itself, or cargo fuzz replays
        # every crash it saved once the time is up.
        "${build[@]}" "$t" >"$log" 2>&1 || { echo "!! $t: build failed, see $log"; failed=1; continue; }
        "target/$triple/release/$t" -artifact_prefix="artifacts/$t/" "${dirs[@]}" \
            -max_total_time="$seconds" -print_final_stats=1 "${extra[@]}" >>"$log" 2>&1
        rc=$?
    fi
    echo "run.sh: wall $(( $(date +%s) - start ))s" >>"$log"
    after=$(ls "artifacts/$t" | wc -l)
    crashes=$((after - before))
    # Plain mode: "#N DONE cov: .. corp: N/..b .. exec/s: N" and
    # stat::number_of_executed_units; fork mode: "#N: cov: .. corp: N .. exec/s: N".
    execs=$(grep -a 'stat::number_of_executed_units' "$log" | tail -1 | awk '{print $2}')
    [ -z "$execs" ] && execs=$(grep -aE '^#[0-9]+' "$log" | tail -1 | sed -E 's/^#([0-9]+).*/\1/')
    rate=$(grep -a 'stat::average_exec_per_sec' "$log" | tail -1 | awk '{print $2}')
    if [ -z "$rate" ] && [ -n "$execs" ]; then
        # Fork mode reports exec/s 0: divide by its own clock.
        took=$(grep -aoE 'time: [0-9]+s' "$log" | tail -1 | grep -oE '[0-9]+')
        [ -n "$took" ] && [ "$took" -gt 0 ] && rate=$((execs / took))
    fi
    corp=$(grep -aoE 'corp: [0-9]+' "$log" | tail -1 | awk '{print $2}')
    if [ $rc -ne 0 ] || [ "$crashes" -gt 0 ]; then
        failed=1
        echo "!! $t: crashed (exit $rc); new artifacts: $crashes; see $log"
        grep -aE 'panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer' "$log" | head -5
    fi
    summary+=("$(printf '%-14s %6ss  execs %-12s exec/s %-8s corpus %-6s crashes %s' \
        "$t" "$seconds" "${execs:-?}" "${rate:-?}" "${corp:-?}" "$crashes")")
done

echo
echo "== summary ($mode)"
printf '%s\n' "${summary[@]}"
exit $failed
