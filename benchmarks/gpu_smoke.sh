#!/usr/bin/env bash
# GPU smoke run, for when a GPU is lent: each model_type at the guide's size (MobileNetV2 and
# ResNet152 224, EfficientNetB7 600) with mixed precision, a fixed number of steps, the loader
# off (one pre-made batch: the GPU's own pace) and on (worker processes, shared-memory batches)
# with the decoded-image cache off and on; the Keras networks on every Keras backend installed
# (TensorFlow, PyTorch, JAX; a missing one is skipped, with a line). Then a table with images/s,
# peak GPU memory and the loader's share of each step, and short real training runs through
# the trainer. Writes benchmarks/results/gpu_smoke_*.json and *.log and gpu_smoke_table.md.
# Sized to stay under 10 minutes on one H100/H200.
#   bash benchmarks/gpu_smoke.sh
#   STEPS=40 WORKERS=8 MODELS="mobilenet resnet efficientnet" BACKENDS="tensorflow torch jax"
#   CACHES="none ram" TRAINER="resnet mobilenet_torch" (set but empty: no trainer run)
#   ALLOW_CPU=1 runs it without a GPU (to try the script itself)
set -uo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-40}"
WORKERS="${WORKERS:-8}"
MODELS="${MODELS-mobilenet resnet efficientnet}"  # set but empty: no benchmark, only the trainer runs
BACKENDS="${BACKENDS-tensorflow torch jax}"
CACHES="${CACHES-none ram}"
TRAINER="${TRAINER-resnet mobilenet_torch}"
RESULTS=benchmarks/results
mkdir -p "$RESULTS"
rm -f "$RESULTS"/gpu_smoke_*.json  # the table below is this run's alone
if ! nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; then
  echo "no NVIDIA GPU found (nvidia-smi failed)"
  [ "${ALLOW_CPU:-0}" = 1 ] || exit 0
fi
nproc 2>/dev/null | sed 's/^/CPU cores: /'
have() { python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec(\"$1\") is None)" >/dev/null 2>&1; }
bench() {  # model loader cache backend
  local tag="$1_$2${3:+_$3}${4:+_$4}"
  timeout 150 python benchmarks/train_throughput.py --model_type "$1" --mixed_precision \
    --loader "$2" ${3:+--cache "$3"} --steps "$STEPS" --workers "$WORKERS" \
    ${4:+--keras_backend "$4"} --output "$RESULTS/gpu_smoke_${tag}.json" \
    > "$RESULTS/gpu_smoke_${tag}.log" 2>&1 \
    && grep -E "^$1" "$RESULTS/gpu_smoke_${tag}.log" \
    || echo "$tag: failed or timed out (see $RESULTS/gpu_smoke_${tag}.log)"
}
runs() {  # model [backend]
  bench "$1" off "" "${2:-}"
  for cache in $CACHES; do bench "$1" on "$cache" "${2:-}"; done
}
for model in $MODELS; do
  if [ "$model" = resnet ]; then
    have torch && runs resnet || echo "resnet: skipped, torch is not installed"
    continue
  fi
  have keras || { echo "$model: skipped, keras is not installed"; continue; }
  for backend in $BACKENDS; do
    have "$backend" || { echo "$model on Keras/$backend: skipped, $backend is not installed"; continue; }
    runs "$model" "$backend"
  done
done
python benchmarks/gpu_smoke_table.py "$RESULTS" | tee "$RESULTS/gpu_smoke_table.md"
# The trainer itself on the GPU: the photos written by the loader=on runs above, 2 + 1 epochs,
# the second with the cache on.
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
case " $TRAINER " in *" resnet "*) train resnet --model_type resnet ;; esac
case " $TRAINER " in *" mobilenet_torch "*)
  if have torch && have keras; then
    train mobilenet_torch --model_type mobilenet --keras_backend torch --cache ram
  else echo "trainer mobilenet_torch: skipped, torch or keras is not installed"; fi ;;
esac
exit 0
