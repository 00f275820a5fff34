#!/usr/bin/env bash
# GPU smoke run, for when a GPU is lent: each model_type at its seed default size with mixed
# precision, a fixed number of steps, data loader on and off. Prints one table row per run and
# writes benchmarks/results/gpu_smoke_*.json. Sized to stay under 8 minutes on one H100.
#   bash benchmarks/gpu_smoke.sh            (STEPS=40 WORKERS=8 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-40}"
WORKERS="${WORKERS:-8}"
mkdir -p benchmarks/results
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
for model in mobilenet resnet efficientnet; do
  for loader in off on; do
    timeout 150 python benchmarks/train_throughput.py --model_type "$model" --mixed_precision \
      --loader "$loader" --steps "$STEPS" --workers "$WORKERS" \
      --output "benchmarks/results/gpu_smoke_${model}_${loader}.json" 2>&1 \
      | grep -E "^(model_type|$model)" || echo "$model loader=$loader: failed or timed out"
  done
done
