"""Generator steps per second of each preset in train.py, float32 against
bfloat16: what a user waits for, end to end.

Runs `train.py --flagfile=configs/<preset>.flags --compute_dtype=<dtype>`
for the first --steps generator steps (the preset's σ is then calibrated to
that shorter run, which does not change a step's cost), float32 and
bfloat16 in turn, --rounds times, so that load from other processes hits
both alike. A run's speed is the median of its `speed/examples_per_sec`
TensorBoard scalars after the first interval, which holds the tracing
(multi_worker_scaling.examples_per_sec); a preset's is the median over
rounds. Unlike benchmarks/generator_step.py, which times the step alone
in one process, this includes the input pipeline, callbacks, checkpoints
and logging.

  python benchmarks/preset_speed.py --data_dir=DATA \
    --fashion_mnist_dir=/usr/share/datasets/fashion-mnist

The last line printed is one JSON object: `sec_per_step_<dtype>_<preset>`
and `speedup_bf16_<preset>_train` (float32's time / bfloat16's).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import generator_step  # pylint: disable=g-import-not-at-top
import multi_worker_scaling  # pylint: disable=g-import-not-at-top

# The DP-GAN configurations (the warm-start presets have no DP-SGD phase).
PRESETS = ('dpgan/mnist_eps1', 'mnist_eps10', 'dpgan/fashion_mnist_eps1',
           'dpgan/fashion_mnist_eps10')
DTYPES = ('float32', 'bfloat16')
LOG_EVERY = 16


def run_speed(preset: str, dtype: str, steps: int, manual_dir: str,
              data_dir: str, model_dir: str) -> float:
  """Seconds per generator step of `steps` steps of the preset."""
  c = generator_step.preset_config(preset, dtype)
  per_step = c.batch_size * c.n_critic
  generator_steps_per_epoch = (c.max_train_examples // c.batch_size
                               // c.n_critic)
  argv = [sys.executable, os.path.join(REPO_ROOT, 'train.py'),
          f'--flagfile={REPO_ROOT}/configs/{preset}.flags', '--seed=1',
          f'--compute_dtype={dtype}',
          f'--epochs={(steps + 0.5) / generator_steps_per_epoch:.6f}',
          f'--log_every={LOG_EVERY}', f'--checkpoint_every={steps}',
          f'--sample_every={steps}', f'--manual_dir={manual_dir}',
          f'--data_dir={data_dir}', f'--model_dir={model_dir}']
  with open(model_dir + '.log', 'w') as log:
    if subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                      check=False).returncode != 0:
      sys.exit(f'{preset} {dtype}: train.py failed, see {model_dir}.log')
  return per_step / multi_worker_scaling.examples_per_sec(model_dir)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--presets', nargs='+', default=PRESETS,
                      choices=PRESETS)
  parser.add_argument('--steps', type=int, default=6 * LOG_EVERY)
  parser.add_argument('--rounds', type=int, default=1)
  parser.add_argument('--data_dir', required=True,
                      help='A tfds directory (prepared there if needed).')
  parser.add_argument('--mnist_dir', default=os.path.join(REPO_ROOT, 'data',
                                                          'mnist'))
  parser.add_argument('--fashion_mnist_dir',
                      default='/usr/share/datasets/fashion-mnist')
  args = parser.parse_args()
  results = {}
  with tempfile.TemporaryDirectory() as scratch:
    for preset in args.presets:
      manual_dir = {'mnist': args.mnist_dir,
                    'fashion_mnist': args.fashion_mnist_dir}[
                        generator_step.preset_config(preset, 'float32').dataset]
      seconds = {dtype: [] for dtype in DTYPES}
      for r in range(args.rounds):
        for dtype in DTYPES:
          seconds[dtype].append(run_speed(
              preset, dtype, args.steps, manual_dir, args.data_dir,
              os.path.join(scratch, f"{preset.replace('/', '-')}_{dtype}_{r}")))
      for dtype in DTYPES:
        results[f'sec_per_step_{dtype}_{preset}'] = round(
            statistics.median(seconds[dtype]), 3)
      results[f'speedup_bf16_{preset}_train'] = round(
          results[f'sec_per_step_float32_{preset}'] /
          results[f'sec_per_step_bfloat16_{preset}'], 3)
      print(f'{preset}: float32 {results[f"sec_per_step_float32_{preset}"]} '
            f's, bfloat16 {results[f"sec_per_step_bfloat16_{preset}"]} s a '
            f'generator step ({results[f"speedup_bf16_{preset}_train"]}x)',
            flush=True)
  print(json.dumps(results))


if __name__ == '__main__':
  main()
