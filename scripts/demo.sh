#!/usr/bin/env bash
# The main job: a short private training run on Fashion-MNIST (offline),
# printing epsilon, writing samples, TensorBoard logs and a TF Serving export.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT="${OUT_DIR:-/tmp/dpgan_demo}"
.venv/bin/python train.py --dataset=fashion_mnist \
  --manual_dir=/usr/share/datasets/fashion-mnist \
  --data_dir="$OUT/tfds" --model_dir="$OUT/model" --export_dir="$OUT/export" \
  --target_epsilon=10 --delta=1e-5 --epochs=1 --max_train_examples=2000 "$@"
echo "Samples: $OUT/model/samples.png   TensorBoard: tensorboard --logdir $OUT/model"
