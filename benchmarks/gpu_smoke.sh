#!/usr/bin/env bash
# GPU smoke run, for when a GPU is lent: each model_type at its seed default size with mixed
# precision, a fixed number of steps, data loader on and off, the Keras networks on every Keras
# backend installed (TensorFlow, PyTorch, JAX; a missing one is skipped and said so); then short
# real training runs through the trainer (ResNet152, and MobileNetV2 on Keras' PyTorch backend).
# Prints one table row per run and writes benchmarks/results/gpu_smoke_*.json and *.log.
# Sized to stay under 10 minutes on one H100/H200.
#   bash benchmarks/gpu_smoke.sh
#   STEPS=40 WORKERS=8 MODELS="mobilenet resnet efficientnet" BACKENDS="tensorflow torch jax"
set -uo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-40}"
WORKERS="${WORKERS:-8}"
MODELS="${MODELS-mobilenet resnet efficientnet}"  # set but empty: no benchmark, only the trainer runs
BACKENDS="${BACKENDS-tensorflow torch jax}"
RESULTS=benchmarks/results
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
have() { python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec(\"$1\") is None)" >/dev/null 2>&1; }
bench() {  # model loader backend
  local tag="$1_$2${3:+_$3}"
  timeout 150 python benchmarks/train_throughput.py --model_type "$1" --mixed_precision \
    --loader "$2" --steps "$STEPS" --workers "$WORKERS" ${3:+--keras_backend "$3"} \
    --output "$RESULTS/gpu_smoke_${tag}.json" > "$RESULTS/gpu_smoke_${tag}.log" 2>&1 \
    && grep -E "^(model_type|$1)" "$RESULTS/gpu_smoke_${tag}.log" \
    || echo "$tag: failed or timed out (see $RESULTS/gpu_smoke_${tag}.log)"
}
for model in $MODELS; do
  if [ "$model" = resnet ]; then
    for loader in off on; do bench resnet "$loader"; done
    continue
  fi
  for backend in $BACKENDS; do
    have "$backend" || { echo "$model on Keras/$backend: skipped, $backend is not installed"; continue; }
    bench "$model" off "$backend"
    [ "$model" = mobilenet ] && bench "$model" on "$backend"
  done
done
# The trainer itself on the GPU: the photos written by the loader=on runs above, 2 + 1 epochs.
train() {  # name, then trainer flags
  local name="$1"; shift
  local runs; runs="$(mktemp -d)"
  timeout 240 python train_professional_models.py --data_path benchmarks/data/photos_224 \
    --weights none --epochs 2 --fine_tune_epochs 1 --mixed_precision --workers "$WORKERS" \
    --histogram_freq 0 --output_dir "$runs/runs" --log_dir "$runs/tb" --run_name "$name" "$@" \
    > "$RESULTS/gpu_smoke_train_$name.log" 2>&1 \
    && echo "trainer $name: ok" || echo "trainer $name: failed (see $RESULTS/gpu_smoke_train_$name.log)"
  grep -E "Keras backend|epoch [0-9]+ \(|test split|done:" "$runs/runs/$name/training.log" || true
}
[ -d benchmarks/data/photos_224 ] || python -c "
import sys; sys.path.insert(0, 'benchmarks'); from train_throughput import photo_like_dataset
from pathlib import Path; photo_like_dataset(Path('benchmarks/data'), 224)"
case " $MODELS " in *" resnet "*) train resnet --model_type resnet ;; esac
if have torch && have keras; then train mobilenet_torch --model_type mobilenet --keras_backend torch; fi
exit 0
