#!/usr/bin/env bash
# The GPU-machine runner of the kiln bundle (copied to gpu-bundle/run.sh by scripts/gpu-bundle.sh;
# edit it here). It needs no Rust: only the bundle, an NVIDIA driver, and for the sanitizer and
# SASS steps the CUDA toolkit (compute-sanitizer, ptxas, cuobjdump on PATH or /usr/local/cuda).
#
#   gpu-bundle/run.sh [OUTDIR]          everything below; OUTDIR defaults to $OUT, else ./gpu-logs
#   gpu-bundle/run.sh bench [OUTDIR]    kiln vs PyTorch prefill benchmark (bench.sh; HOOK below)
#
# Steps, in order (each log is also printed):
#   env.txt        nvidia-smi, driver and CUDA versions, tool versions, the bundle's MANIFEST
#   tests.log      every test executable with KILN_TEST_DEVICE=cuda, KILN_FIXTURES=<bundle>/fixtures,
#                  KILN_TEST_DATA=<bundle>/test-data
#   memcheck.log   compute-sanitizer --tool memcheck over the kernel tests (tests/kernels_*)
#   racecheck.log  compute-sanitizer --tool racecheck over the kernel tests (slow: see filters)
#   ptxas.txt      ptxas -v of the bundled PTX with this machine's CUDA (registers, smem, spills)
#   sass.txt       cuobjdump -sass of that cubin
#   summary.txt    one line per step: exit code, tests passed/failed/ignored, seconds
# At most 8 files are written to OUTDIR (the device tool brings back 8).
#
# The last line says ALL STEPS PASSED (exit 0) only when every step ran and passed. A step
# that did not run (the deadline came, a tool such as ptxas or compute-sanitizer is missing,
# or an option below turned it off) makes it "N STEP(S) SKIPPED" and exit 3; a failed step
# "N STEP(S) FAILED" and exit 1.
#
# Environment (all optional):
#   KILN_TEST_DEVICE=cuda        device for the tests (cuda | all | emulator)
#   KILN_TEST_FILTER=SUBSTR      libtest name filter for the test step
#   KILN_SANITIZE=0              skip memcheck and racecheck
#   KILN_SANITIZE_EXES='kernels_*'   which test executables the sanitizers run (a glob)
#   KILN_MEMCHECK_FILTER=SUBSTR  libtest name filter under memcheck
#   KILN_RACECHECK=0             skip racecheck only
#   KILN_RACECHECK_EXES=GLOB     executables for racecheck (default: KILN_SANITIZE_EXES)
#   KILN_RACECHECK_FILTER=SUBSTR libtest name filter under racecheck (racecheck is slow: use it)
#   KILN_RACECHECK_SKIP='flash_attention_long_chunks'  libtest --skip under racecheck (empty:
#                                none). On the H200 racecheck of the 4100-query flash attention
#                                case was killed after 83 s (2026-11-29); the same code paths
#                                (several query tiles, several key blocks, late starts) run under
#                                racecheck in flash_attention_matches_f64_and_is_chunk_invariant
#   KILN_EXTRA_SANITIZERS='initcheck synccheck'  more compute-sanitizer tools (into memcheck.log)
#   KILN_SASS=0                  skip ptxas/cuobjdump
#   KILN_STEP_TIMEOUT=300        seconds per step
#   KILN_DEADLINE=540            seconds for the whole run: later steps are skipped, not cut
#                                off, so the summary is always written (the device tool stops a
#                                command at 600 s)
#   KILN_TOOL_DIRS='/usr/local/cuda/bin /usr/local/cuda-*/bin'   where CUDA tools are looked
#                                for after PATH (empty: PATH only)
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ "${1:-}" == bench ]]; then
    shift
    # ---- HOOK: bench -------------------------------------------------------------------------
    # kiln vs PyTorch prefill: bench.sh is scripts/gpu-bench.sh (see its header and
    # docs/bench.md); it writes at most 8 files to OUTDIR (default "${OUT:-./gpu-logs}").
    if [[ ! -f "$here/bench.sh" ]]; then
        echo "run.sh bench: no bench.sh in the bundle (rebuild it with scripts/gpu-bundle.sh)" >&2
        exit 2
    fi
    exec bash "$here/bench.sh" "$@"
    # ------------------------------------------------------------------------------------------
fi

# Executables packed by gpu-bundle.sh to fit the transfer limit: unpack them once, in place.
if [[ -f "$here/bin.tar.xz" && ! -d "$here/tests" ]]; then
    if command -v xz >/dev/null; then
        tar -C "$here" -xJf "$here/bin.tar.xz"
    else
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
            "$here/bin.tar.xz" "$here"
    fi || { echo "run.sh: cannot unpack $here/bin.tar.xz" >&2; exit 1; }
fi

# Tests that spawn the binary use the absolute path cargo baked in at build time
# (CARGO_BIN_EXE_kiln, written to kiln.path by gpu-bundle.sh): put a link to the bundled kiln
# there if nothing is.
baked_note="(no kiln.path in the bundle)"
if [[ -f "$here/kiln.path" ]]; then
    baked="$(cat "$here/kiln.path")"
    if [[ -e "$baked" ]]; then
        baked_note="$baked exists; used as is"
    elif mkdir -p "$(dirname "$baked")" 2>/dev/null && ln -s "$here/kiln" "$baked" 2>/dev/null; then
        baked_note="linked $baked -> $here/kiln"
    else
        baked_note="cannot create $baked: tests that run kiln will fail"
    fi
fi

out="${1:-${OUT:-./gpu-logs}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

export KILN_TEST_DEVICE="${KILN_TEST_DEVICE:-cuda}"
export KILN_FIXTURES="${KILN_FIXTURES:-$here/fixtures}"
export KILN_TEST_DATA="${KILN_TEST_DATA:-$here/test-data}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
step_timeout="${KILN_STEP_TIMEOUT:-300}"
deadline="${KILN_DEADLINE:-540}"
sanitize_exes="${KILN_SANITIZE_EXES:-kernels_*}"
racecheck_exes="${KILN_RACECHECK_EXES:-$sanitize_exes}"

# A CUDA tool from PATH or the toolkit folders (KILN_TOOL_DIRS).
tool() {
    local d t
    t="$(command -v "$1" 2>/dev/null)"
    if [[ -n "$t" && -x "$t" ]]; then
        echo "$t"
        return 0
    fi
    # shellcheck disable=SC2206 # split on spaces and expand the globs
    local dirs=(${KILN_TOOL_DIRS-/usr/local/cuda/bin /usr/local/cuda-*/bin})
    for d in "${dirs[@]}"; do
        if [[ -x "$d/$1" ]]; then
            echo "$d/$1"
            return 0
        fi
    done
    return 1
}

# Summary rows: step, exit, passed, failed, ignored, seconds.
rows=()
failed_steps=0
skipped_steps=0

# skip_step NAME WHY [LOGFILE]: records a step that did not run (never a pass).
skip_step() {
    rows+=("$1|SKIPPED: $2|-|-|-|0")
    skipped_steps=$((skipped_steps + 1))
    echo "=== $1: SKIPPED ($2)" | tee -a "${3:-/dev/null}"
}

# run_step NAME LOGFILE CMD...: runs CMD under the step timeout, appends its output to LOGFILE
# (and prints it), and records a summary row with the libtest counts found in its output.
run_step() {
    local name="$1" log="$2"
    shift 2
    local left=$((deadline - SECONDS))
    if ((left < 15)); then
        skip_step "$name" "the ${deadline}s deadline is near" "$log"
        return
    fi
    local limit=$((left < step_timeout ? left : step_timeout))
    echo "=== $name: $* (timeout ${limit}s)" | tee -a "$log"
    local start=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" >"$work/step.log" 2>&1 </dev/null
    rc=$?
    cat "$work/step.log" >>"$log"
    cat "$work/step.log"
    local p f i
    read -r p f i < <(grep -o 'test result: [A-Za-z]*\. [0-9]* passed; [0-9]* failed; [0-9]* ignored' \
        "$work/step.log" | awk '{p += $4; f += $6; i += $8} END {print p + 0, f + 0, i + 0}')
    # A name filter that matches no test of this executable: compute-sanitizer exits 255
    # ("terminated before first instrumented API call"); nothing ran, so it is a skip.
    if ((rc != 0 && p + f + i == 0)) && grep -q '^running 0 tests' "$work/step.log" &&
        ! grep -q '^running [1-9]' "$work/step.log"; then
        skip_step "$name" "no test matched the filter"
        return
    fi
    local status="$rc"
    ((rc == 124 || rc == 137)) && status="$rc (timeout)"
    ((rc != 0)) && failed_steps=$((failed_steps + 1))
    rows+=("$name|$status|$p|$f|$i|$((SECONDS - start))")
    echo "=== $name: exit $status, $p passed, $f failed, $i ignored, $((SECONDS - start))s" | tee -a "$log"
}

# ---- environment ---------------------------------------------------------------------------
{
    echo "kiln GPU run: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    echo "bundle: $here    output: $out"
    echo "KILN_TEST_DEVICE=$KILN_TEST_DEVICE  KILN_FIXTURES=$KILN_FIXTURES"
    echo "kiln binary for tests (CARGO_BIN_EXE_kiln): $baked_note"
    echo
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi
        nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,clocks.max.sm \
            --format=csv
        echo "CUDA (driver): $(nvidia-smi | grep -o 'CUDA Version: *[0-9.]*' | head -1)"
    else
        echo "nvidia-smi not found: no NVIDIA driver here?"
    fi
    for t in nvcc ptxas compute-sanitizer; do
        if p="$(tool "$t")"; then
            echo "--- $t ($p)"
            "$p" --version 2>&1 | tail -n 3
        else
            echo "--- $t: not found"
        fi
    done
    echo "--- $(uname -srm); $(ldd --version 2>&1 | head -1)"
    echo
    cat "$here/MANIFEST.txt" 2>/dev/null || echo "(no MANIFEST.txt in the bundle)"
} 2>&1 | tee "$out/env.txt"

# ---- tests ---------------------------------------------------------------------------------
: >"$out/tests.log"
test_exes=0
for exe in "$here"/tests/*; do
    [[ -x "$exe" ]] || continue
    test_exes=$((test_exes + 1))
    run_step "test $(basename "$exe")" "$out/tests.log" \
        "$exe" ${KILN_TEST_FILTER:+"$KILN_TEST_FILTER"}
done
if ((test_exes == 0)); then
    rows+=("tests|no test executables in $here/tests|-|-|-|0")
    failed_steps=$((failed_steps + 1))
fi

# ---- sanitizers ----------------------------------------------------------------------------
if [[ "${KILN_SANITIZE:-1}" == 0 ]]; then
    skip_step "memcheck/racecheck" "KILN_SANITIZE=0"
else
    if sanitizer="$(tool compute-sanitizer)"; then
        : >"$out/memcheck.log"
        for exe in "$here"/tests/$sanitize_exes; do
            [[ -x "$exe" ]] || continue
            run_step "memcheck $(basename "$exe")" "$out/memcheck.log" \
                "$sanitizer" --tool memcheck --error-exitcode 1 --print-limit 50 \
                "$exe" ${KILN_MEMCHECK_FILTER:+"$KILN_MEMCHECK_FILTER"}
            for extra in ${KILN_EXTRA_SANITIZERS:-}; do
                run_step "$extra $(basename "$exe")" "$out/memcheck.log" \
                    "$sanitizer" --tool "$extra" --error-exitcode 1 --print-limit 50 \
                    "$exe" ${KILN_MEMCHECK_FILTER:+"$KILN_MEMCHECK_FILTER"}
            done
        done
        if [[ "${KILN_RACECHECK:-1}" == 0 ]]; then
            skip_step "racecheck" "KILN_RACECHECK=0"
        else
            : >"$out/racecheck.log"
            racecheck_skip=()
            for name in ${KILN_RACECHECK_SKIP-flash_attention_long_chunks}; do
                racecheck_skip+=(--skip "$name")
            done
            for exe in "$here"/tests/$racecheck_exes; do
                [[ -x "$exe" ]] || continue
                run_step "racecheck $(basename "$exe")" "$out/racecheck.log" \
                    "$sanitizer" --tool racecheck --error-exitcode 1 --print-limit 50 \
                    "$exe" ${KILN_RACECHECK_FILTER:+"$KILN_RACECHECK_FILTER"} "${racecheck_skip[@]}"
            done
        fi
    else
        skip_step "memcheck/racecheck" "compute-sanitizer not found" "$out/memcheck.log"
    fi
fi

# The architecture the PTX targets (sm_90a: wgmma, setmaxnreg), from its `.target` line.
ptx_arch="$(awk '$1 == ".target" {print $2; exit}' "$here/ptx/kernels.ptx" 2>/dev/null)"
ptx_arch="${ptx_arch:-sm_90a}"

# ---- ptxas / SASS --------------------------------------------------------------------------
if [[ "${KILN_SASS:-1}" == 0 ]]; then
    skip_step "ptxas/cuobjdump" "KILN_SASS=0"
else
    if [[ ! -f "$here/ptx/kernels.ptx" ]]; then
        rows+=("ptxas|no PTX in bundle|-|-|-|0")
        failed_steps=$((failed_steps + 1))
    elif ptxas="$(tool ptxas)" && cuobjdump="$(tool cuobjdump)"; then
        : >"$out/ptxas.txt"
        run_step "ptxas -v" "$out/ptxas.txt" \
            "$ptxas" -arch="$ptx_arch" -v "$here/ptx/kernels.ptx" -o "$work/kernels.cubin"
        if [[ -f "$work/kernels.cubin" ]]; then
            # Capped below the device tool's 16 MiB per file.
            "$cuobjdump" -sass "$work/kernels.cubin" >"$work/sass.txt" 2>&1
            rc=$?
            head -c 15000000 "$work/sass.txt" >"$out/sass.txt"
            ((rc != 0)) && failed_steps=$((failed_steps + 1))
            rows+=("cuobjdump -sass|$rc|-|-|-|0")
        else
            skip_step "cuobjdump -sass" "ptxas wrote no cubin"
        fi
    else
        skip_step "ptxas/cuobjdump" "not found" "$out/ptxas.txt"
    fi
fi

# ---- summary -------------------------------------------------------------------------------
{
    printf '%-44s %-20s %7s %7s %8s %6s\n' step exit passed failed ignored secs
    for r in "${rows[@]}"; do
        IFS='|' read -r s e p f i t <<<"$r"
        printf '%-44s %-20s %7s %7s %8s %6s\n' "$s" "$e" "$p" "$f" "$i" "$t"
    done
    echo
    # Failed tests, and sanitizer reports with findings (their "0 errors" summaries are not).
    grep -h -E '^test .* FAILED$|^---- .* stdout ----$|SUMMARY: [1-9]|^========= (Invalid|Race|Error|Warning|Program hit|Barrier|Uninitialized)' \
        "$out/tests.log" "$out/memcheck.log" "$out/racecheck.log" 2>/dev/null | sort -u | head -40
    echo
    if ((failed_steps > 0)); then
        echo "$failed_steps STEP(S) FAILED, $skipped_steps SKIPPED (${SECONDS}s); logs in $out"
    elif ((skipped_steps > 0)); then
        echo "$skipped_steps STEP(S) SKIPPED, none failed: NOT a full pass (${SECONDS}s)"
    else
        echo "ALL STEPS PASSED (${SECONDS}s)"
    fi
} | tee "$out/summary.txt"

if ((failed_steps > 0)); then
    exit 1
elif ((skipped_steps > 0)); then
    exit 3
fi
exit 0
