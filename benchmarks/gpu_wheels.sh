#!/usr/bin/env bash
# Download the wheels of benchmarks/gpu_wheels.txt for a GPU machine without a registry, into
# benchmarks/wheels/ (about 20 MB); gpu_smoke.sh installs there the ones whose package is missing (--no-index --no-deps).
#   bash benchmarks/gpu_wheels.sh            # for Python 3.12 on x86-64 Linux
#   PYTHON_VERSION=3.11 bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf benchmarks/wheels
python -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version "${PYTHON_VERSION:-3.12}" --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_28_x86_64 -r benchmarks/gpu_wheels.txt -d benchmarks/wheels
ls benchmarks/wheels
du -sh benchmarks/wheels
