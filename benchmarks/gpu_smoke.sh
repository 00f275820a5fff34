#!/usr/bin/env bash
# One GPU check that shows all of it (issue #23), in one go under 9 minutes on one H100/H200:
# for each network (MobileNetV2, ResNet152, EfficientNetB7 at the guide's sizes, mixed
# precision) and each route (PyTorch; Keras on every Keras backend installed):
#   1. the bare loop a user would write in that framework (bare_loops.py),
#   2. this project's training step with the loader off (train_throughput.py --loader off),
#      also with --compile on the PyTorch routes, and with the loader on where CACHES names one,
#   3. the trainer end to end (train_professional_models.py, 3 epochs, loader and ram cache on,
#      validation included; trainer_pace.py reads its images/s from the run),
# then one table of images/s and ratios (gpu_smoke_table.py). Every child runs under
# `timeout -k`; a child that would end past the budget is skipped with a line.
# Writes benchmarks/results/gpu_smoke_*.json and *.log and gpu_smoke_table.md.
#   bash benchmarks/gpu_smoke.sh
#   MODELS="mobilenet resnet efficientnet" BACKENDS="tensorflow torch jax" STEPS=30 WARMUP=5
#   WORKERS=8 CACHES="" (e.g. "ram": also the step with the loader on) TRAINER=1 EPOCHS=3
#   BUDGET=530 (seconds for all children) SIZE=/BATCH= (override the guide's sizes)
#   COMPILE=1: the PyTorch routes' step also with --compile (torch.compile; on Keras'
#   PyTorch backend jit_compile=True), a row of its own
#   ALLOW_CPU=1 runs it without a GPU, at tiny sizes (32 px, batch 4, 2 steps), to try it;
#   its files go to benchmarks/results/cpu_try/ unless RESULTS says where.
set -uo pipefail
cd "$(dirname "$0")/.."
# A GPU machine without a registry: the wheels of gpu_wheels.txt, downloaded here beforehand by
# `bash benchmarks/gpu_wheels.sh` and carried in benchmarks/wheels/; only missing ones install.
if compgen -G "benchmarks/wheels/*.whl" >/dev/null; then
  missing=$(python -c "
import importlib.metadata as md
for line in open('benchmarks/gpu_wheels.txt', encoding='utf-8'):
    wanted = line.split('#')[0].strip()
    if wanted:
        try:
            md.version(wanted.split('==')[0])
        except md.PackageNotFoundError:
            print(wanted)")
  if [ -n "$missing" ]; then
    echo "installing from benchmarks/wheels: $(echo $missing)"
    python -m pip install --quiet --no-index --no-deps --find-links benchmarks/wheels $missing \
      || echo "pip could not install them from benchmarks/wheels"
  fi
fi
RESULTS="${RESULTS:-benchmarks/results}"
MODELS="${MODELS-mobilenet resnet efficientnet}"
BACKENDS="${BACKENDS-tensorflow torch jax}"
CACHES="${CACHES-}"
TRAINER="${TRAINER-1}"
WORKERS="${WORKERS:-8}"
BUDGET="${BUDGET:-530}"
GPU=1
if ! nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; then
  echo "no NVIDIA GPU found (no working nvidia-smi)"
  [ "${ALLOW_CPU:-0}" = 1 ] || exit 0
  GPU=0
fi
if [ "$GPU" = 1 ]; then
  STEPS="${STEPS:-30}"; WARMUP="${WARMUP:-5}"; EPOCHS="${EPOCHS:-3}"; PRECISION=--mixed_precision
else  # ALLOW_CPU: the script itself, at sizes a CPU runs in seconds; its figures go to a
  # folder of their own, never over a GPU run's (benchmarks/results/gpu_smoke_table.md)
  [ "$RESULTS" = benchmarks/results ] && RESULTS=benchmarks/results/cpu_try
  STEPS="${STEPS:-2}"; WARMUP="${WARMUP:-1}"; EPOCHS="${EPOCHS:-2}"; PRECISION=
  SIZE="${SIZE:-32}"; BATCH="${BATCH:-4}"; WORKERS="${WORKERS_CPU:-1}"
fi
mkdir -p "$RESULTS"
rm -f "$RESULTS"/gpu_smoke_*.json  # the table below is this run's alone
nproc 2>/dev/null | sed 's/^/CPU cores: /'
START=$SECONDS
have() { python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec(\"$1\") is None)" >/dev/null 2>&1; }
guide() {  # the guide's size and batch of a network: "224 64"
  case "$1" in mobilenet) echo "224 64" ;; resnet) echo "224 32" ;; *) echo "600 16" ;; esac
}
child() {  # limit tag command...: run under timeout -k within what is left of the budget
  local limit="$1" tag="$2"; shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 20 ]; then echo "$tag: skipped, over the ${BUDGET} s budget"; return 1; fi
  [ "$limit" -gt "$left" ] && limit="$left"
  timeout -k 5 "$limit" "$@" > "$RESULTS/gpu_smoke_${tag}.log" 2>&1 \
    || { echo "$tag: failed or timed out after ${limit} s (see $RESULTS/gpu_smoke_${tag}.log)"; return 1; }
}
data_for() {  # size: 10 classes x 60 photo-like JPEGs, written once
  local folder="benchmarks/data/smoke_$1"
  [ -d "$folder" ] || python -c "
import sys; sys.path.insert(0, '.')
from pathlib import Path; from pokedex_trainer.data.synthetic import write_dataset
write_dataset(Path('$folder'), classes=[f'Clase{i:02d}' for i in range(10)], per_class=60,
              size=($1 * 4 // 3, $1), seed=0, quality=92)"
  echo "$folder"
}
for model in $MODELS; do
  read -r size batch <<< "$(guide "$model")"
  size="${SIZE:-$size}"; batch="${BATCH:-$batch}"
  common=(--model_type "$model" --image_size "$size" "$size" --batch_size "$batch" $PRECISION)
  routes=()
  have torch && routes+=("pytorch:torch") || echo "$model on PyTorch: skipped, torch is not installed"
  for backend in $BACKENDS; do
    if have keras && have "$backend"; then routes+=("keras:$backend")
    else echo "$model on Keras/$backend: skipped, keras or $backend is not installed"; fi
  done
  for route in "${routes[@]}"; do
    framework="${route%%:*}"; backend="${route##*:}"; tag="${model}_${framework}_${backend}"
    if [ "$framework" = pytorch ]; then bare=(--loop torch); else bare=(--loop keras --keras_backend "$backend"); fi
    child 200 "bare_$tag" python benchmarks/bare_loops.py --model_type "$model" \
      --image_size "$size" --batch_size "$batch" $PRECISION --warmup "$WARMUP" --steps "$STEPS" \
      "${bare[@]}" --output "$RESULTS/gpu_smoke_bare_$tag.json" && tail -n 1 "$RESULTS/gpu_smoke_bare_$tag.log"
    flags=("${common[@]}" --framework "$framework" --keras_backend "$backend" --steps "$STEPS")
    [ "$framework" = pytorch ] && flags=("${common[@]}" --framework pytorch --steps "$STEPS")
    child 200 "step_$tag" python benchmarks/train_throughput.py "${flags[@]}" --loader off \
      --output "$RESULTS/gpu_smoke_step_$tag.json" && tail -n 1 "$RESULTS/gpu_smoke_step_$tag.log"
    if [ "${COMPILE:-1}" = 1 ] && [ "$backend" = torch ]; then  # torch.compile: measured, not assumed
      child 300 "step_${tag}_compiled" python benchmarks/train_throughput.py "${flags[@]}" --compile \
        --loader off --output "$RESULTS/gpu_smoke_step_${tag}_compiled.json" \
        && tail -n 1 "$RESULTS/gpu_smoke_step_${tag}_compiled.log"
    fi
    for cache in $CACHES; do
      child 200 "step_${tag}_$cache" python benchmarks/train_throughput.py "${flags[@]}" \
        --loader on --cache "$cache" --workers "$WORKERS" \
        --output "$RESULTS/gpu_smoke_step_${tag}_$cache.json" \
        && tail -n 1 "$RESULTS/gpu_smoke_step_${tag}_$cache.log"
    done
    [ "$TRAINER" = 1 ] || continue
    runs="$(mktemp -d)"
    trainer=(--framework "$framework")
    [ "$framework" = keras ] && trainer+=(--keras_backend "$backend")
    if child 300 "trainer_$tag" python train_professional_models.py --data_path "$(data_for "$size")" \
        "${common[@]}" "${trainer[@]}" --weights none --epochs "$EPOCHS" --fine_tune_epochs 0 \
        --workers "$WORKERS" --cache ram --histogram_freq 0 --output_dir "$runs/runs" \
        --log_dir "$runs/tb" --run_name "$tag"; then
      python benchmarks/trainer_pace.py "$runs/runs/$tag" \
        --output "$RESULTS/gpu_smoke_trainer_$tag.json" || echo "trainer $tag: no pace"
    fi
    rm -rf "$runs"
  done
done
echo "children done in $((SECONDS - START)) s"
python benchmarks/gpu_smoke_table.py "$RESULTS" | tee "$RESULTS/gpu_smoke_table.md"
exit 0
