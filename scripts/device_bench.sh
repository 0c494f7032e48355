#!/usr/bin/env bash
# Benchmark every registered adapter (and PEFT's lora/dora/vera/pvera/ia3) on ViT-B/16 with random
# weights, bf16 autocast, on a lent CUDA GPU (under 5 minutes with the eight adapters of before; not
# re-timed with twelve); writes the tables to $OUT
# (or /tmp/pvera-device-bench when OUT is unset).
#
#   scripts/device_bench.sh            # on the GPU machine (python3 there holds torch, timm, peft)
#   scripts/device_bench.sh --dry-run  # here, on CPU: prints the plan of each GPU run, then runs
#                                      # the same code path on a tiny ViT on the CPU (bf16 autocast)
#
# Runs, in order, each bounded by --max-seconds and `timeout`: batch 64 (the main table, with
# eval throughput at batch 256), then batch 8 (the CPU table's batch) if enough budget is left.
# Step time and eval throughput are interleaved medians over rounds; peak memory is
# torch.cuda.max_memory_allocated (see scripts/bench_adapters.py). Not run yet: no GPU was lent.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT_DIR=${OUT:-/tmp/pvera-device-bench}
mkdir -p "$OUT_DIR"
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
BUDGET=${BUDGET_S:-285}   # whole script, seconds
START=$SECONDS
LOG="$OUT_DIR/device_bench.log"

common=(--model vit_base_patch16_224 --device cuda --amp bf16 --threads 8 --rounds 10 --warmup 2
        --min-time 0.25 --eval-batch 256)

run() {  # run <tag> <timeout_s> <args...>
  local tag=$1 limit=$2; shift 2
  echo "== $tag: $PY scripts/bench_adapters.py $*" | tee -a "$LOG"
  timeout "$limit" "$PY" scripts/bench_adapters.py "$@" \
      --out-md "$OUT_DIR/bench_$tag.md" --out-csv "$OUT_DIR/bench_$tag.csv" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] && echo "== $tag: exit status $rc (124: hit its ${limit}s limit)" | tee -a "$LOG"
  return 0
}

if [ "$DRY" = 1 ]; then
  for b in 64 8; do "$PY" scripts/bench_adapters.py "${common[@]}" --batch "$b" --dry-run || exit 1; done
  # the same code path (bf16 autocast, PEFT references, merged eval), on a tiny ViT on the CPU
  exec "$PY" scripts/bench_adapters.py --tiny --device cpu --amp bf16 --threads 1 --rounds 2 --warmup 1 \
      --mem none --batch 8 --out-md "$OUT_DIR/bench_dry.md" --out-csv "$OUT_DIR/bench_dry.csv"
fi

{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  "$PY" -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)
try:
    import peft; print('peft', peft.__version__)
except Exception as e: print('peft missing:', e)" 2>&1
} | tee "$LOG"

# --max-seconds ends the timing rounds in time to write the tables; `timeout` is the hard stop
run b64 $((BUDGET - 60)) "${common[@]}" --batch 64 --max-seconds 140
left=$((BUDGET - (SECONDS - START)))
if [ "$left" -gt 60 ]; then  # eval throughput does not depend on the training batch: measured once, above
  run b8 "$left" "${common[@]}" --batch 8 --no-eval --max-seconds $((left - 35))
else
  echo "== b8: skipped, ${left}s of the budget left" | tee -a "$LOG"
fi
echo "== done in $((SECONDS - START)) s; tables in $OUT_DIR" | tee -a "$LOG"
