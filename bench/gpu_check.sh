#!/usr/bin/env bash
# bench/gpu_check.sh [--dry-run]: what a lent GPU should measure, in one command of at most ~9 minutes.
#
#   OUT=/some/dir bash bench/gpu_check.sh      # on the GPU machine (the device tool sets $OUT)
#   bash bench/gpu_check.sh --dry-run          # on a CPU: the same flow at tiny sizes, ~3-5 minutes
#
# Parts, each under `timeout` with its own budget (seconds, overridable by the variables named),
# all inside GPU_CHECK_TOTAL_S (default 540): a part that hangs is killed and the next one runs.
#   env        nvidia-smi, versions; installs .whl/*.whl (pure-Python peers) if the folder exists
#   tests      the kernel tests on CUDA, compiled Triton (tests/opd_kernels)   GPU_CHECK_TESTS_S=140
#   bench-*    pytest bench/ on grid gpu-check: N 4,096 and 16,384, V 151,936, D_s 4,096,
#              D_t 8,192, bf16; one pytest run per op, results merged  GPU_CHECK_BENCH_S=110,100,80,70
#              (bench-pg: fused_policy_gradient_loss against naive, the unfused ours and Liger's GRPO loss)
#   opd-step   python -m bench.opd_step --preset gpu: OPD steps of a Qwen3-VL-2B student and an 8B teacher (full
#              depth, random init, bf16), ours against TRL's recipes, 4k-token video and up   GPU_CHECK_STEP_S=120
#              (the whole grid takes a call of its own: GPU_CHECK_SKIP=tests,bench-rkl-full,bench-logprobs,bench-pg,bench-rest
#              GPU_CHECK_STEP_S=500; each provider's finished rows are kept when its budget ends)
#   plan-check python -m bench.plan_check --device cuda: the loop's OPD step (bench.opd_step's, exact objective)
#              of a Qwen3-VL-2B student and an 8B teacher (full depth, random init, bf16, gradient
#              checkpointing) at 4k and 16k video tokens, each phase's allocator peak against
#              videoopd.plan's memory (goal: within 15%; the table goes to gpu_check.log)   GPU_CHECK_PLAN_S=150
#              (alone: GPU_CHECK_SKIP=tests,bench-rkl-full,bench-logprobs,bench-pg,bench-rest,opd-step)
#   summary    python -m bench.gpu_summary: prints the summary, writes summary.md
# GPU_CHECK_SKIP=opd-step,tests (say) skips those parts: a second call that measures only what changed.
# Everything lands in $OUT (at most 8 files, what the device tool brings back):
#   gpu_check.log (all output but the tests'), kernel_tests.log, <device>-<date>.{json,csv,md}
#   (+ .png with matplotlib), opd_step.json, summary.md.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; elif [[ -n "${1:-}" ]]; then
  echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2
fi
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
PY="${PYTHON:-python3}"
export PY
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$SECONDS
TOTAL="${GPU_CHECK_TOTAL_S:-540}"
IFS=, read -r BENCH_RKL_S BENCH_LP_S BENCH_REST_S BENCH_PG_S <<< "${GPU_CHECK_BENCH_S:-110,100,80,70}"
BENCH_PG_S="${BENCH_PG_S:-70}"
TESTS_S="${GPU_CHECK_TESTS_S:-140}"
STEP_S="${GPU_CHECK_STEP_S:-120}"
PLAN_S="${GPU_CHECK_PLAN_S:-150}"
SUMMARY_S=20  # kept back for the summary

# part NAME BUDGET OUTPUT_FILE CMD...: runs CMD under timeout, appends a PART line to the log.
part() {
  local name=$1 budget=$2 output=$3
  shift 3
  local left=$(( TOTAL - SUMMARY_S - (SECONDS - START) ))
  if [[ ",${GPU_CHECK_SKIP:-}," == *",$name,"* ]]; then
    printf 'PART\t%s\tskipped: GPU_CHECK_SKIP\t0\n' "$name" >> "$LOG"
    echo "[gpu-check] $name: skipped (GPU_CHECK_SKIP)"
    return
  fi
  if (( left < 10 )); then
    printf 'PART\t%s\tskipped: no time left\t0\n' "$name" >> "$LOG"
    echo "[gpu-check] $name: skipped, no time left"
    return
  fi
  (( budget > left )) && budget=$left
  echo "[gpu-check] $name (up to ${budget}s) ..."
  printf '\n===== %s (budget %ss) =====\n' "$name" "$budget" >> "$LOG"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$budget" "$@" >> "$output" 2>&1
  rc=$?
  local took=$(( SECONDS - t0 )) status
  case $rc in
    0) status="ok" ;;
    124|137) status="timed out after ${budget}s (killed)" ;;
    *) status="exit $rc" ;;
  esac
  printf 'PART\t%s\t%s\t%s\n' "$name" "$status" "$took" >> "$LOG"
  echo "[gpu-check] $name: $status (${took}s)"
}

env_probe() {
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && echo "installed $(ls .whl/*.whl | wc -l) wheel(s) from .whl/ into /tmp/site"
  fi
  "$PY" - <<'EOF'
import importlib.metadata as md, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for dist in ("triton", "transformers", "accelerate", "peft", "pytest-benchmark", "liger-kernel", "cut-cross-entropy", "matplotlib"):
    try:
        print(dist, md.version(dist))
    except md.PackageNotFoundError:
        print(dist, "not installed")
EOF
}

if compgen -G ".whl/*.whl" > /dev/null; then export PYTHONPATH="/tmp/site:$PYTHONPATH"; fi
part env 30 "$LOG" bash -c "$(declare -f env_probe); env_probe"

BENCH=("$PY" -m pytest -q -p no:cacheprovider --bench-results-dir "$OUT")
if (( DRY )); then
  # CPU: the ops wrapped as on CUDA (OPD_TEST_DEVICE=cpu-copy), a few tests; the smoke grid.
  part tests 150 "$OUT/kernel_tests.log" env OPD_TEST_DEVICE=cpu-copy "$PY" -m pytest -q -p no:cacheprovider -rfE \
    tests/opd_kernels/test_test_device.py tests/opd_kernels/test_reverse_kl.py tests/opd_kernels/test_token_logprobs.py \
    tests/opd_kernels/test_empty_inputs.py tests/opd_kernels/test_reverse_kl_memory.py -k "torch or empty or test_test_device"
  SHAPES=(--bench-shapes smoke --bench-seconds 0.02 --bench-providers ours-torch,ours-torch-compiled,ours-triton-chunked,matmul-floor,naive,liger-fused-linear-kldiv)
  part bench-rkl-full 90 "$LOG" "${BENCH[@]}" bench/test_reverse_kl.py "${SHAPES[@]}" --bench-ops fused_reverse_kl-full
  part bench-logprobs 60 "$LOG" "${BENCH[@]}" bench/test_token_logprobs.py "${SHAPES[@]}"
  part bench-pg 60 "$LOG" "${BENCH[@]}" bench/test_policy_gradient_loss.py --bench-shapes smoke --bench-seconds 0.02 \
    --bench-providers ours-torch,ours-unfused,matmul-floor,naive,liger-fused-linear-grpo
  part bench-rest 60 "$LOG" "${BENCH[@]}" bench/test_reverse_kl.py bench/test_topk_logprobs.py "${SHAPES[@]}" \
    --bench-ops fused_reverse_kl-forward,topk_logprobs
  part opd-step 180 "$LOG" "$PY" -m bench.opd_step --preset cpu-smoke --steps 2 --video-tokens 64 --budget-s 160 \
    --out "$OUT" --stem opd_step --formats json
  # tiny sizes: the flow, not the figure (the baseline's noise dominates a few MiB)
  part plan-check 240 "$LOG" "$PY" -m bench.plan_check --sizes 64x1/96x1/4096/64 --steps 1 --tolerance 10
  part timeout-selftest 2 "$LOG" sleep 30  # must read "timed out": the budget machinery works
else
  part tests "$TESTS_S" "$OUT/kernel_tests.log" "$PY" -m pytest -q -p no:cacheprovider -rfE --durations=15 \
    tests/opd_kernels
  SHAPES=(--bench-shapes gpu-check --bench-seconds 0.5)
  part bench-rkl-full "$BENCH_RKL_S" "$LOG" "${BENCH[@]}" bench/test_reverse_kl.py "${SHAPES[@]}" \
    --bench-ops fused_reverse_kl-full --bench-providers \
    ours-triton-chunked,ours-triton-fused,ours-torch,ours-torch-compiled,matmul-floor,naive,liger-fused-linear-jsd,liger-fused-linear-jsd-fp32-accum,liger-fused-linear-kldiv
  part bench-logprobs "$BENCH_LP_S" "$LOG" "${BENCH[@]}" bench/test_token_logprobs.py "${SHAPES[@]}" \
    --bench-providers ours-triton,ours-torch,ours-torch-compiled,matmul-floor,naive,cce
  part bench-pg "$BENCH_PG_S" "$LOG" "${BENCH[@]}" bench/test_policy_gradient_loss.py "${SHAPES[@]}" \
    --bench-providers ours-torch,ours-torch-compiled,ours-triton,ours-unfused,matmul-floor,naive,liger-fused-linear-grpo
  part bench-rest "$BENCH_REST_S" "$LOG" "${BENCH[@]}" bench/test_reverse_kl.py bench/test_topk_logprobs.py "${SHAPES[@]}" \
    --bench-ops fused_reverse_kl-forward,topk_logprobs \
    --bench-providers ours-triton-chunked,ours-triton-fused,ours-triton,ours-torch,ours-torch-compiled,matmul-floor,naive
  part opd-step "$STEP_S" "$LOG" "$PY" -m bench.opd_step --preset gpu --budget-s $(( STEP_S - 15 )) \
    --out "$OUT" --stem opd_step --formats json
  part plan-check "$PLAN_S" "$LOG" "$PY" -m bench.plan_check --device cuda --steps 2 \
    --sizes qwen3-vl-2b/qwen3-vl-8b/4096,qwen3-vl-2b/qwen3-vl-8b/16384
fi

timeout 30 "$PY" -m bench.gpu_summary "$OUT" || echo "[gpu-check] summary failed (see $LOG)"
echo "[gpu-check] done in $(( SECONDS - START ))s; results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
