#!/bin/bash
# Issue 7's reproducibility check on a GPU machine that has PyTorch but none of our other packages and
# no network (the H200 machines lent to some sessions): retrain shapes-sd with the default command
# (seed 0) on CUDA, measure it and the committed weights the same way, and leave the new weights in
# $OUT (or ./repro-out) so they can also be measured on a CPU with `lmd-batch shapes evaluate`.
#
# Prepare on a machine with pip, in the checkout (both folders are git-ignored via .git/info/exclude):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
#     diffusers==0.42.1 importlib_metadata pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 \
#     typing-inspection==0.4.5
#   mkdir -p .devcache && cp -r ~/.cache/lmd-batch/models/_clip-vocab .devcache/   # after any model build
# Then run this script there with .whl and .devcache carried (~65 MB with the committed weights).
# Measured 2026-12-04 on one H200 (16 cores, --workers 8, before the per-step loss reads were
# removed): VAE, encoding and 2,900 of the 4,000 UNet steps in 365 s.
set -o pipefail
out=${OUT:-repro-out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
if [ -d .devcache/_clip-vocab ]; then
  export LMD_BATCH_MODELS=/tmp/lmd-models && mkdir -p $LMD_BATCH_MODELS && cp -r .devcache/_clip-vocab $LMD_BATCH_MODELS/
fi
nvidia-smi -L
timeout "${BUDGET:-540}" python3 benchmarks/shapes_reproduce.py --out /tmp/repro --device cuda --workers "${WORKERS:-8}" \
  --json "$out/repro.json" 2>&1 | grep -v -E "Writing model|kept in float32" | tee "$out/log.txt"
# The weights (fp16; under 16 MB a file) and the small files, for measuring on a CPU afterwards.
cp /tmp/repro/unet/diffusion_pytorch_model.safetensors "$out/unet.safetensors"
cp /tmp/repro/text_encoder/model.safetensors "$out/text_encoder.safetensors"
tar -C /tmp/repro -cf "$out/small.tar" --exclude=./tokenizer --exclude=./unet/diffusion_pytorch_model.safetensors \
  --exclude=./text_encoder/model.safetensors .
