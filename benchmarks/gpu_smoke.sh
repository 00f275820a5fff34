#!/usr/bin/env bash
# GPU smoke run, for when a GPU is lent: each model_type at its seed default size with mixed
# precision, a fixed number of steps, data loader on and off; then a short real training run
# of ResNet152 through the trainer (both phases, checkpoints, evaluation of the test split).
# Prints one table row per run and writes benchmarks/results/gpu_smoke_*.json and
# gpu_smoke_train.log. Sized to stay under 8 minutes on one H100.
#   bash benchmarks/gpu_smoke.sh            (STEPS=40 WORKERS=8 by default)
# The Keras networks need TensorFlow (issue 13 brings the other Keras backends); where it is
# not installed their rows say "failed".
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-40}"
WORKERS="${WORKERS:-8}"
RESULTS=benchmarks/results
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
for model in mobilenet resnet efficientnet; do
  for loader in off on; do
    timeout 150 python benchmarks/train_throughput.py --model_type "$model" --mixed_precision \
      --loader "$loader" --steps "$STEPS" --workers "$WORKERS" \
      --output "$RESULTS/gpu_smoke_${model}_${loader}.json" 2>&1 \
      | grep -E "^(model_type|$model)" || echo "$model loader=$loader: failed or timed out"
  done
done
# The trainer itself on the GPU: the photos written by the loader=on runs above, 2 + 1 epochs.
RUNS="$(mktemp -d)"
timeout 240 python train_professional_models.py --data_path benchmarks/data/photos_224 \
  --model_type resnet --weights none --epochs 2 --fine_tune_epochs 1 --mixed_precision \
  --workers "$WORKERS" --histogram_freq 0 --output_dir "$RUNS/runs" --log_dir "$RUNS/tb" \
  --run_name gpu_smoke > "$RESULTS/gpu_smoke_train.log" 2>&1 \
  && echo "trainer: ok" || echo "trainer: failed (see $RESULTS/gpu_smoke_train.log)"
grep -E "epoch [0-9]+ \(|test split|done:" "$RUNS/runs/gpu_smoke/training.log" || true
cat "$RUNS/runs/gpu_smoke/history.csv" 2>/dev/null || true
