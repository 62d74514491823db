#!/usr/bin/env bash
# The main job, offline: a short private training run on Fashion-MNIST
# (configs/demo.flags), then a quick check that its samples are useful: the
# accuracy, on real images the run did not train on, of a CNN trained on
# samples alone. Prints epsilon, where everything is, and that accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT="${OUT_DIR:-/tmp/dpgan_demo}"
start=$(date +%s)
.venv/bin/python train.py --flagfile=configs/demo.flags \
  --manual_dir=/usr/share/datasets/fashion-mnist \
  --data_dir="$OUT/tfds" --model_dir="$OUT/model" --export_dir="$OUT/export" \
  "$@"
.venv/bin/python eval.py --dataset=fashion_mnist --data_dir="$OUT/tfds" \
  --model_dir="$OUT/model" --export_dir="$OUT/export" \
  --eval_split=validation --downstream_only --num_samples=2000 \
  --output="$OUT/quality.json"
.venv/bin/python - "$OUT" "$(( $(date +%s) - start ))" <<'PY'
import json, os, sys
out, seconds = sys.argv[1:]
report = json.load(open(os.path.join(out, 'quality.json')))
privacy, held = report['privacy'], report['held_out']
with open(os.path.join(report['export']['path'], 'assets', 'dpgan.json')) as f:
  classes = json.load(f)['class_names']
samples = report['downstream']['synthetic']['train_examples']
print(f"""
Demo finished in {seconds} s.
  Privacy:     epsilon = {privacy['epsilon']:.3f} (delta = {privacy['delta']:g}) after {privacy['critic_steps']} critic steps
  Samples:     {out}/model/samples.png, a row per class, top to bottom:
               {', '.join(classes)}
  Export:      {report['export']['path']} (TF Serving SavedModel)
  TensorBoard: tensorboard --logdir {out}/model
  Quality:     {report['metrics']['accuracy_synthetic']:.1%} accuracy on {held['examples']} held-out real images
               ({held['range']}, not trained on) of a CNN trained on
               {samples} samples alone (chance: 10%)""")
PY
