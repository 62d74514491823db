#!/usr/bin/env bash
# On a host with GPUs: the critic-step benchmark, then the MNIST epsilon=1
# preset with --strategy=mirrored over every visible GPU and its validation
# report. Everything goes to results/gpu/<host>-<date>/ (OUT_DIR overrides).
# Refuses, before doing anything, where TensorFlow sees no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
gpus=$(TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python -c \
  'import tensorflow as tf; print(len(tf.config.list_physical_devices("GPU")))')
if [ "$gpus" = 0 ]; then
  echo "scripts/gpu_mirrored.sh: error: TensorFlow sees no GPU here. On a" \
    "host with NVIDIA GPUs and drivers, install TensorFlow's CUDA libraries" \
    "into the environment (.venv/bin/pip install 'tensorflow[and-cuda]==2.15.1')" \
    "and check nvidia-smi." >&2
  exit 2
fi
OUT="${OUT_DIR:-results/gpu/$(hostname)-$(date +%Y%m%d-%H%M)}"
RUN="${RUN_DIR:-$OUT/run}"
mkdir -p "$OUT"
.venv/bin/python benchmarks/critic_step.py | tee "$OUT/critic_step.txt"
start=$(date +%s)
.venv/bin/python train.py --flagfile=configs/dpgan/mnist_eps1.flags --seed=1 \
  --strategy=mirrored --manual_dir=data/mnist --data_dir="$RUN/tfds" \
  --model_dir="$RUN/model" --export_dir="$RUN/export" 2>&1 |
  tee "$OUT/train_log.txt"
echo "$gpus GPU(s), $(( $(date +%s) - start )) s of training" > "$OUT/about.txt"
.venv/bin/python eval.py --export_dir="$RUN/export" --model_dir="$RUN/model" \
  --dataset=mnist --data_dir="$RUN/tfds" --inception_weights=none \
  --downstream_runs=4 --eval_split=validation \
  --output="$OUT/validation_runs4.json"
echo "Figures in $OUT"
