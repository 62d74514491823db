#!/usr/bin/env bash
# The seed benchmark table (docs/datasets.md): CIFAR-10, CelebA 32/64/128
# (gender) and Camelyon, trained at epsilon 1 and 10 and evaluated on the
# test split, where the data and a GPU exist. Writes results/seed/<run>/
# (train_log.txt, test.json and its samples, command.txt); checkpoints and
# exports go to RUNS (default /tmp/dpgan_seed).
#
#   DATA=/path/to/tfds MANUAL=/path/to/official/files bash scripts/seed_benchmarks.sh [DATASET...]
#
# DATA is the tfds --data_dir; MANUAL (optional) holds the official files of
# datasets not yet prepared there (one subfolder per dataset, named as the
# dataset: MANUAL/cifar10, MANUAL/celeb_a, MANUAL/patch_camelyon). INCEPTION
# (optional) is the InceptionV3 no-top .h5 for FID. Refuses, naming what is
# missing, without a GPU or without a dataset's data; nothing is downloaded.
# These runs use one untuned configuration for every dataset (below): their
# figures are what it measures, not tuned presets.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DATA="${DATA:-}"
MANUAL="${MANUAL:-}"
INCEPTION="${INCEPTION:-none}"
OUT="${OUT:-results/seed}"
RUNS="${RUNS:-/tmp/dpgan_seed}"
DATASETS=("$@")
[ ${#DATASETS[@]} -gt 0 ] || DATASETS=(cifar10 celeb_a32 celeb_a celeb_a128 camelyon)

refuse() { echo "seed_benchmarks.sh: $*" >&2; exit 2; }

[ -n "$DATA" ] || refuse "set DATA to the tfds data directory (see docs/datasets.md)."
"$PY" - <<'PY' || refuse "no GPU visible to TensorFlow: these runs take days on a CPU."
import sys, tensorflow as tf
sys.exit(0 if tf.config.list_physical_devices('GPU') else 1)
PY

# Every dataset's data must be there before the first run starts.
for dataset in "${DATASETS[@]}"; do
  "$PY" - "$dataset" "$DATA" "$MANUAL" <<'PY' || exit 2
import os, sys
from dpgan_tf import data
dataset, data_dir, manual = sys.argv[1:]
spec = data.get_spec(dataset)
manual_dir = os.path.join(manual, spec.tfds_name) if manual else None
try:
  data.check_available(spec, data_dir, manual_dir if manual_dir and
                       os.path.isdir(manual_dir) else None)
except ValueError as e:
  sys.exit(f'seed_benchmarks.sh: {dataset}: {e}')
PY
done

# One configuration for all (untuned): DPGAN's setting without pretraining.
COMMON=(--target_epsilon=EPS --delta=1e-6 --sampling=poisson --batch_size=256
        --epochs=20 --n_critic=2 --loss=hinge --generator_width=64
        --critic_width=64 --latent_dim=128 --generator_ema=0.995 --seed=1)
for dataset in "${DATASETS[@]}"; do
  tfds_name=$("$PY" -c "from dpgan_tf import data; print(data.get_spec('$dataset').tfds_name)")
  manual_flag=()
  [ -n "$MANUAL" ] && [ -d "$MANUAL/$tfds_name" ] && manual_flag=(--manual_dir="$MANUAL/$tfds_name")
  for eps in 1 10; do
    run="$OUT/${dataset}_eps${eps}"
    work="$RUNS/${dataset}_eps${eps}"
    mkdir -p "$run"
    train=("$PY" train.py --dataset="$dataset" --data_dir="$DATA" "${manual_flag[@]}"
           --model_dir="$work/model" --export_dir="$work/export"
           "${COMMON[@]/EPS/$eps}")
    eval=("$PY" eval.py --dataset="$dataset" --data_dir="$DATA" "${manual_flag[@]}"
          --export_dir="$work/export" --model_dir="$work/model"
          --inception_weights="$INCEPTION" --eval_split=test
          --output="$run/test.json")
    printf '%q ' "${train[@]}" > "$run/command.txt"; echo >> "$run/command.txt"
    printf '%q ' "${eval[@]}" >> "$run/command.txt"; echo >> "$run/command.txt"
    "${train[@]}" 2>&1 | tee "$run/train_log.txt"
    "${eval[@]}"
  done
done
