#!/usr/bin/env bash
# The benchmark on the GPU machine: kiln vs PyTorch/transformers prefill, same weights, same
# prompts. Copied into the bundle as gpu-bundle/bench.sh by scripts/gpu-bundle.sh (edit it
# here); run through the bundle's runner:
#
#   gpu-bundle/run.sh bench [OUTDIR]      OUTDIR defaults to $OUT, else ./gpu-logs
#
# Steps (the whole run keeps inside KILN_BENCH_BUDGET seconds; later steps get what is left):
#   0. the kernels: bench-kernels (benches/kernels.rs: kiln's GEMM and flash attention through
#      its own launch path, TFLOP/s vs the peak) and lab/gemm.py, lab/attention.py (the same
#      kernels beside cuBLAS and SDPA in one process, with correctness and bit-identity checks)
#      -> kernels.txt, kernels-bench.json
#  0b. full depth: bench-full-depth (benches/full_depth.rs: 48 layers, synthetic weights made
#      on the GPU, N up to 32768), then its transformers peer lab/full_depth_torch.py at the
#      same depth and lengths, with the side-by-side table -> full-depth.txt (both outputs),
#      full-depth-bench.json (kiln), full-depth-torch.json (transformers)
#  0c. decode at batch 1: bench-decode (benches/decode.rs: 30b dims at 2 and 48 layers, prompts
#      512 and 4096, greedy, ms/token against the bytes-read roofline and the device copy
#      measured in the same process), then lab/decode_torch.py (transformers generate, same
#      dims, same depths and prompts) with the side by side -> decode.txt (both outputs),
#      decode-bench.json (kiln), decode-torch.json (transformers)
#   1. kiln synth: the tiny model and the 30b model (Qwen3-30B-A3B dims, KILN_BENCH_LAYERS
#      layers, BF16, seed 0) into a scratch folder
#   2. kiln bench on both files: tokens/s, TFLOP/s, weight TB/s, stage breakdown -> bench.json;
#      the prompt ids and last-position logits go to the scratch folder for step 3
#   3. python3 bench_torch.py: kernel peers (matmul, bmm, SDPA, copy) and
#      transformers.Qwen3MoeForCausalLM on the same files and prompts -> torch.json
#   4. the side-by-side table -> combined.txt (printed last)
# Files in OUTDIR: env.txt, kernels.txt, kernels-bench.json, full-depth.txt,
# full-depth-bench.json, full-depth-torch.json, decode.txt, decode-bench.json,
# decode-torch.json, bench.json, torch.json, combined.txt, kiln-bench.log, torch-bench.log
# (14: the device tool brings back 8 files, so tar OUTDIR into $OUT when calling it there).
#
# Environment (all optional):
#   KILN_BENCH_BUDGET=510      seconds for everything (the device tool stops a command at 600)
#   KILN_BENCH_LENGTHS=512,2048,4096,8192
#   KILN_BENCH_MODELS=tiny,30b
#   KILN_BENCH_LAYERS=2        layers of the 30b model
#   KILN_BENCH_REPEATS=3       timed runs per (model, N); the median is reported
#   KILN_BENCH_SKIP_AFTER=60   skip a model's longer lengths once one run takes longer (s)
#   KILN_BENCH_TORCH=0         skip the PyTorch peer
#   KILN_BENCH_KERNELS=0       skip step 0 (the kernel benchmark and lab)
#   KILN_BENCH_FULL_DEPTH=0    skip step 0b (benches/full_depth.rs: 48 layers, synthetic weights
#                              generated on the GPU, N up to 32768 -> full-depth.txt, .json)
#   KILN_FULL_DEPTH_LAYERS=48  step 0b's depth, and KILN_FULL_DEPTH_LENGTHS its lengths
#                              (512,...,32768), for kiln and torch alike
#   KILN_BENCH_FULL_DEPTH_TIMEOUT=150      bench-full-depth's cap in seconds (less if the
#                                          budget is short)
#   KILN_BENCH_FULL_DEPTH_TORCH=0          skip step 0b's transformers peer
#   KILN_BENCH_FULL_DEPTH_TORCH_TIMEOUT=200   its cap in seconds (less if the budget is short)
#   KILN_BENCH_FULL_DEPTH_TORCH_REPEATS=2  its timed runs per N (after 1 warm-up)
#   KILN_BENCH_DECODE=0        skip step 0c (decode); KILN_BENCH_DECODE_TORCH=0 its torch peer only
#   KILN_DECODE_LAYERS=2,48  KILN_DECODE_PROMPTS=512,4096  KILN_DECODE_STEPS=64   step 0c's runs
#   KILN_BENCH_DECODE_TIMEOUT=120, KILN_BENCH_DECODE_TORCH_TIMEOUT=200   their caps in seconds
#   KILN_BENCH_E2E=0           skip steps 1-4 (end-to-end prefill)
#   KILN_BENCH_EXPERTS=grouped_mm,eager   transformers experts backends to time
#   KILN_BENCH_DEVICE=emulator a smoke test of this whole script without a GPU: kiln on its CPU
#                              emulator, torch on the CPU (tiny model, N=8, 1 repeat by default)
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-${OUT:-./gpu-logs}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d /tmp/kiln-bench.XXXXXX)"
trap 'rm -rf "$work"' EXIT

budget="${KILN_BENCH_BUDGET:-510}"
if [[ "${KILN_BENCH_DEVICE:-cuda}" == emulator ]]; then
    kiln_device=(--device emulator) torch_device=(--device cpu)
    lengths="${KILN_BENCH_LENGTHS:-8}" models="${KILN_BENCH_MODELS:-tiny}"
    repeats="${KILN_BENCH_REPEATS:-1}"
else
    kiln_device=() torch_device=()
    lengths="${KILN_BENCH_LENGTHS:-512,2048,4096,8192}" models="${KILN_BENCH_MODELS:-tiny,30b}"
    repeats="${KILN_BENCH_REPEATS:-3}"
fi
layers="${KILN_BENCH_LAYERS:-2}"
skip_after="${KILN_BENCH_SKIP_AFTER:-60}"
experts="${KILN_BENCH_EXPERTS:-grouped_mm,eager}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}" PYTHONUNBUFFERED=1

left() { echo $((budget - SECONDS)); }
# Seconds a step may take: its cap ($1), or what is left of the budget less 30 s if less.
cap_time() {
    local room=$(($(left) - 30))
    echo $((room < $1 ? room : $1))
}
say() { printf '\n== [%3ss] %s\n' "$SECONDS" "$*"; }
# run_capped TXT NAME SECONDS MIN TITLE CMD...: one program of steps 0b and 0c. When SECONDS (a
# cap_time) is at least MIN: says TITLE, runs CMD under `timeout --kill-after=10 SECONDS` and
# prints "NAME: exit N"; otherwise prints only "NAME: skipped, SECONDSs left in the budget".
# CMD's output (stdout and stderr) and the NAME line are appended to TXT as well.
run_capped() {
    local txt=$1 name=$2 secs=$3 min=$4 title=$5
    shift 5
    if ((secs >= min)); then
        say "$title"
        timeout --kill-after=10 "$secs" "$@" 2>&1 | tee -a "$txt"
        echo "$name: exit ${PIPESTATUS[0]}" | tee -a "$txt"
    else
        echo "$name: skipped, ${secs}s left in the budget" | tee -a "$txt"
    fi
}

# The kiln binary: packed into bin.tar.xz when the bundle was over budget.
kiln="$here/kiln"
if [[ ! -x "$kiln" && -f "$here/bin.tar.xz" ]]; then
    if command -v xz >/dev/null; then
        tar -C "$here" -xJf "$here/bin.tar.xz" kiln
        for b in bench-kernels bench-full-depth bench-decode; do
            tar -C "$here" -xJf "$here/bin.tar.xz" "$b" 2>/dev/null || true
        done
    else
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extract("kiln", sys.argv[2])' \
            "$here/bin.tar.xz" "$here"
    fi
fi
if [[ ! -x "$kiln" ]]; then
    echo "bench: no kiln binary in $here (run scripts/gpu-bundle.sh first)" >&2
    exit 1
fi
# The commit the bundle was built from, for the reports.
if [[ -z "${KILN_GIT:-}" && -f "$here/MANIFEST.txt" ]]; then
    KILN_GIT="$(awk '/^commit:/ {sub(/^commit: */, ""); print; exit}' "$here/MANIFEST.txt")"
fi
export KILN_GIT="${KILN_GIT:-}"

{
    echo "kiln bench: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname); commit ${KILN_GIT:-unknown}"
    echo "models $models, lengths $lengths, 30b layers $layers, repeats $repeats, budget ${budget}s"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.draw \
        --format=csv 2>&1 || echo "nvidia-smi: not available"
    python3 -c 'import torch, transformers, numpy; print("torch", torch.__version__, "transformers", transformers.__version__, "numpy", numpy.__version__, "cuda", torch.cuda.is_available())' 2>&1
    nproc
} 2>&1 | tee "$out/env.txt"

# ---- 0. the kernels ---------------------------------------------------------------------------
if [[ "${KILN_BENCH_KERNELS:-1}" != 0 && "${KILN_BENCH_DEVICE:-cuda}" != emulator ]]; then
    say "kernels: bench-kernels, lab/gemm.py, lab/attention.py"
    {
        if [[ -x "$here/bench-kernels" ]]; then
            KILN_BENCH_OUT="$out" timeout 120 "$here/bench-kernels" || echo "bench-kernels: exit $?"
        else
            echo "bench-kernels: not in the bundle"
        fi
        for lab in gemm attention; do
            (cd "$here/lab" && KILN_PTX="$here/ptx/kernels.ptx" timeout 150 python3 "$lab.py") ||
                echo "lab/$lab.py: exit $?"
        done
    } 2>&1 | tee "$out/kernels.txt"
fi
# ---- 0b. full depth: 48 layers, synthetic weights made on the GPU -----------------------------
if [[ "${KILN_BENCH_FULL_DEPTH:-1}" != 0 && "${KILN_BENCH_DEVICE:-cuda}" != emulator ]]; then
    fd_layers="${KILN_FULL_DEPTH_LAYERS:-48}"
    fd_lengths="${KILN_FULL_DEPTH_LENGTHS:-512,2048,4096,8192,16384,32768}"
    txt="$out/full-depth.txt"
    : >"$txt"
    if [[ -x "$here/bench-full-depth" ]]; then
        # Capped by the budget like the steps after it, so the run keeps inside it.
        t=$(cap_time "${KILN_BENCH_FULL_DEPTH_TIMEOUT:-150}")
        run_capped "$txt" bench-full-depth "$t" 20 \
            "full depth: bench-full-depth ($fd_layers layers, GPU-generated synthetic weights; ${t}s)" \
            env KILN_BENCH_OUT="$out" KILN_BENCH_LAYERS="$fd_layers" \
            KILN_FULL_DEPTH_LENGTHS="$fd_lengths" "$here/bench-full-depth"
    else
        echo "bench-full-depth: not in the bundle" | tee "$txt"
    fi
    # The transformers peer at the same depth and lengths (lab/full_depth_torch.py: random bf16
    # weights made on the GPU). bench-full-depth was its own process and has exited, so its
    # ~60 GB are free. Its build (~61 GB) and runs must fit in what is left: capped, and it
    # starts no N past its own deadline.
    if [[ "${KILN_BENCH_FULL_DEPTH_TORCH:-1}" != 0 ]]; then
        t=$(cap_time "${KILN_BENCH_FULL_DEPTH_TORCH_TIMEOUT:-200}")
        run_capped "$txt" full_depth_torch.py "$t" 60 \
            "full depth: lab/full_depth_torch.py (transformers, same dims; ${t}s)" \
            python3 "$here/lab/full_depth_torch.py" --census --layers "$fd_layers" --lengths "$fd_lengths" \
            --repeats "${KILN_BENCH_FULL_DEPTH_TORCH_REPEATS:-2}" --deadline-s "$((t - 40))" \
            --json "$out/full-depth-torch.json" --kiln-json "$out/full-depth-bench.json"
    fi
fi
# ---- 0c. decode at batch 1: kiln and transformers generate, same dims --------------------------
if [[ "${KILN_BENCH_DECODE:-1}" != 0 && "${KILN_BENCH_DEVICE:-cuda}" != emulator ]]; then
    dec_layers="${KILN_DECODE_LAYERS:-2,48}"
    dec_prompts="${KILN_DECODE_PROMPTS:-512,4096}"
    dec_steps="${KILN_DECODE_STEPS:-64}"
    txt="$out/decode.txt"
    : >"$txt"
    t=$(cap_time "${KILN_BENCH_DECODE_TIMEOUT:-120}")
    if [[ ! -x "$here/bench-decode" ]]; then
        echo "bench-decode: not in the bundle" | tee -a "$txt"
    else
        run_capped "$txt" bench-decode "$t" 20 \
            "decode: bench-decode (layers $dec_layers, prompts $dec_prompts, $dec_steps steps; ${t}s)" \
            env KILN_BENCH_OUT="$out" KILN_DECODE_LAYERS="$dec_layers" \
            KILN_DECODE_PROMPTS="$dec_prompts" KILN_DECODE_STEPS="$dec_steps" "$here/bench-decode"
    fi
    # transformers generate on the same dims (a separate process: bench-decode's memory is free).
    if [[ "${KILN_BENCH_DECODE_TORCH:-1}" != 0 ]]; then
        t=$(cap_time "${KILN_BENCH_DECODE_TORCH_TIMEOUT:-200}")
        run_capped "$txt" decode_torch.py "$t" 60 \
            "decode: lab/decode_torch.py (transformers generate; ${t}s)" \
            python3 "$here/lab/decode_torch.py" --layers "$dec_layers" --prompts "$dec_prompts" \
            --steps "$dec_steps" --deadline-s "$((t - 30))" --json "$out/decode-torch.json" \
            --kiln-json "$out/decode-bench.json"
    fi
fi
if [[ "${KILN_BENCH_E2E:-1}" == 0 ]]; then
    say "done (kernels only); files in $out"
    exit 0
fi

# ---- 1. the models ----------------------------------------------------------------------------
say "kiln synth"
declare -A gguf=()
model_args=()
IFS=',' read -ra model_list <<<"$models"
for m in "${model_list[@]}"; do
    case "$m" in
        tiny) preset=tiny; nl=2 ;;
        30b) preset=qwen3-30b-a3b; nl="$layers" ;;
        *) echo "bench: unknown model $m (tiny, 30b)" | tee -a "$out/kiln-bench.log"; continue ;;
    esac
    f="$work/$m.gguf"
    if timeout "$(left)" "$kiln" synth --arch qwen3moe --preset "$preset" --layers "$nl" \
        --dtype BF16 --seed 0 -o "$f" 2>&1 | tee -a "$out/kiln-bench.log"; then
        gguf[$m]="$f"
        model_args+=(--model-file "$m=$f")
    else
        echo "bench: kiln synth of $m failed" | tee -a "$out/kiln-bench.log"
    fi
done
ran_models="$(IFS=,; echo "${!gguf[*]}")"
if [[ -z "$ran_models" ]]; then
    echo "bench: no model could be written" >&2
    exit 1
fi
# Same order as asked.
ordered=()
for m in "${model_list[@]}"; do [[ -n "${gguf[$m]:-}" ]] && ordered+=("$m"); done
ran_models="$(IFS=,; echo "${ordered[*]}")"

# ---- 2. kiln ----------------------------------------------------------------------------------
# Leave the torch peer at least 40% of what is left (it loads the same weights once more).
torch_on="${KILN_BENCH_TORCH:-1}"
kiln_deadline=$(( $(left) * (torch_on == 0 ? 95 : 55) / 100 ))
say "kiln bench (deadline ${kiln_deadline}s)"
timeout --kill-after=10 "$((kiln_deadline + 60))" "$kiln" bench "${kiln_device[@]}" \
    --models "$ran_models" --lengths "$lengths" --layers "$layers" --repeats "$repeats" \
    --seed 0 "${model_args[@]}" --json "$out/bench.json" --prompts "$work/prompts.json" \
    --logits-dir "$work/logits" --skip-after-s "$skip_after" --deadline-s "$kiln_deadline" \
    2>&1 | tee -a "$out/kiln-bench.log"
kiln_rc=${PIPESTATUS[0]}
echo "kiln bench exit $kiln_rc" | tee -a "$out/kiln-bench.log"

# ---- 3. PyTorch -------------------------------------------------------------------------------
torch_rc=0
if [[ "$torch_on" != 0 && -f "$work/prompts.json" ]]; then
    torch_deadline=$(( $(left) - 25 ))
    say "bench_torch.py (deadline ${torch_deadline}s)"
    gguf_args=()
    for m in "${ordered[@]}"; do gguf_args+=(--gguf "$m=${gguf[$m]}"); done
    if ((torch_deadline > 20)); then
        timeout --kill-after=10 "$((torch_deadline + 15))" python3 "$here/bench_torch.py" \
            "${torch_device[@]}" --prompts "$work/prompts.json" "${gguf_args[@]}" --kiln-json "$out/bench.json" \
            --json "$out/torch.json" --combined "$out/combined.txt" --repeats "$repeats" \
            --experts-impls "$experts" --skip-after-s "$skip_after" \
            --deadline-s "$torch_deadline" 2>&1 | tee "$out/torch-bench.log"
        torch_rc=${PIPESTATUS[0]}
    else
        echo "no time left for the torch peer" | tee "$out/torch-bench.log"
        torch_rc=1
    fi
    echo "bench_torch.py exit $torch_rc" | tee -a "$out/torch-bench.log"
fi

# ---- 4. the table (again, from whatever was written, if the torch step died) --------------------
if [[ ! -s "$out/combined.txt" || $torch_rc != 0 ]]; then
    python3 "$here/bench_torch.py" --combine-only --kiln-json "$out/bench.json" \
        --json "$out/torch.json" --combined "$out/combined.txt" >/dev/null 2>&1 ||
        echo "(could not write combined.txt)" >"$out/combined.txt"
fi
say "done: kiln exit $kiln_rc, torch exit $torch_rc; files in $out"
ls -la "$out"
echo
cat "$out/combined.txt"
((kiln_rc == 0 && torch_rc == 0))
