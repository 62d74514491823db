"""ms per generator step of each preset, float32 against each speed option.

A generator step is ConditionalDPGAN.train_step as training.build_model
builds it from the preset's flags file (its networks, n_critic private
critic updates by the ghost engine at the expected batch size, the
generator update and its moving average): what a user waits for. Variants:

* `today`: the step as it was before this benchmark: float32, and a
  generator pass and a critic pass on public fakes after every critic
  update, for the logged critic loss alone (now taken from the generator
  update's fakes, gan.py);
* `fp32`: the step as it is, float32;
* `bf16`: the same flags with --compute_dtype=bfloat16;
* `xla`: float32, the step compiled with tf.function(jit_compile=True).

Timing: every variant of a preset is built and warmed up in one process,
then timed in interleaved rounds (one step of each variant per round, so
load from other processes hits them alike); figures are medians, and
`speedup_<variant>_<preset>_preset` = today's ms / the variant's. Peak
memory:
peak_memory.METHOD, a fresh process per variant (see peak_memory.py).
Also timed: drawing one Poisson batch by index (CriticBatchSampler.batch,
which the input pipeline runs ahead of the step with prefetch(2)), to show
it cannot stall a step that takes far longer.

  python benchmarks/generator_step.py                  # every preset
  python benchmarks/generator_step.py --presets dpgan/mnist_eps1 --repeats 5
  python benchmarks/generator_step.py --profile_dir /tmp/p   # + a profile

--profile_dir writes a TensorBoard profile (Profile tab) of two steps of
the first preset's --profile_variant (bf16) and prints where their time
goes, as benchmarks/profile_summary.py does for a train.py
--profile_steps trace.
The last line printed is one JSON object with every figure.
"""

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,g-bad-import-order
import numpy as np

import dpgan_tf  # Before TensorFlow: it sets the oneDNN default.
import tensorflow as tf

import interleaved
import peak_memory
import profile_summary
import train
from dpgan_tf import batching
from dpgan_tf import data as data_lib
from dpgan_tf import losses
from dpgan_tf import privacy
from dpgan_tf import training

# The DP-GAN configurations (the warm-start presets have no DP-SGD phase).
PRESETS = ('dpgan/mnist_eps1', 'mnist_eps10', 'dpgan/fashion_mnist_eps1',
           'dpgan/fashion_mnist_eps10')
# Variant -> (--compute_dtype, jit_compile).
VARIANTS = {'today': ('float32', False), 'fp32': ('float32', False),
            'bf16': ('bfloat16', False), 'xla': ('float32', True)}
# Training examples of every preset (--max_train_examples).
DATASET_SIZE = 55000


def preset_config(preset: str, compute_dtype: str):
  """The preset's TrainConfig, as train.py parses its flags file."""
  train.FLAGS.unparse_flags()
  train.FLAGS(['train.py', f'--flagfile={ROOT}/configs/{preset}.flags',
               '--model_dir=unused'])
  return dataclasses.replace(train.config_from_flags(),
                             compute_dtype=compute_dtype)


def add_todays_metric_pass(model) -> None:
  """Puts back the passes the step made for its logged critic loss before
  that loss came from the generator update (see module doc)."""
  critic_step = model.critic_step

  def step(images, labels):
    metrics = critic_step(images, labels)
    fakes = model.public_fakes(model.ledger.critic_steps)
    scores = model.critic([fakes['fake'], fakes['labels']], training=False)
    # Returned, so that tf.function does not prune the passes.
    return {**metrics, 'todays_critic_loss_fake': tf.reduce_mean(
        losses.fake_terms(model.options.loss, scores))}

  model.critic_step = step


def build_step(preset: str, variant: str):
  """(the compiled train_step, its input): n_critic random batches of the
  expected size. sigma is a placeholder: it does not change the step."""
  compute_dtype, jit = VARIANTS[variant]
  c = preset_config(preset, compute_dtype)
  spec = data_lib.get_spec(c.dataset)
  q = c.batch_size / DATASET_SIZE
  plan = training.PrivacyPlan(sigma=1.0, warm_sigma=None, sampling_rate=q,
                              curve=None, generator_steps_per_epoch=1,
                              planned_generator_steps=1,
                              total_generator_steps=1)
  ledger = privacy.PrivacyLedger(1.0, q, c.delta, DATASET_SIZE)
  model, _, _ = training.build_model(c, spec, plan, ledger,
                                     tf.distribute.get_strategy(), seed=0)
  if variant == 'today':
    add_todays_metric_pass(model)
  rng = np.random.default_rng(0)
  batches = tuple(
      (tf.constant(rng.integers(0, 256, (c.batch_size, *spec.image_shape)),
                   tf.uint8),
       tf.constant(rng.integers(0, spec.num_classes, c.batch_size), tf.int32))
      for _ in range(c.n_critic))
  return tf.function(model.train_step, jit_compile=jit), batches


def poisson_batch_ms(preset: str, draws: int = 20) -> float:
  """Median ms to draw one Poisson batch of the preset from N images."""
  c = preset_config(preset, 'float32')
  spec = data_lib.get_spec(c.dataset)
  images = data_lib.LabeledImages(
      np.zeros((DATASET_SIZE, *spec.image_shape), np.uint8),
      np.zeros(DATASET_SIZE, np.int32), spec)
  sampler = batching.CriticBatchSampler(images, c.batch_size, 'poisson', 0)
  times = []
  for step in range(draws):
    start = time.perf_counter()
    sampler.batch(step)
    times.append(1e3 * (time.perf_counter() - start))
  return statistics.median(times)


def profile(step, batches, logdir: str):
  """Writes a TensorBoard profile of two steps; prints where their time
  went (profile_summary.py)."""
  step(batches)
  tf.profiler.experimental.start(logdir)
  for _ in range(2):
    step(batches)
  tf.profiler.experimental.stop()
  return profile_summary.summarize(profile_summary.newest_trace(logdir), 2)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--presets', nargs='+', default=PRESETS,
                      choices=PRESETS)
  parser.add_argument('--variants', nargs='+', default=list(VARIANTS),
                      choices=list(VARIANTS))
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--profile_dir', default=None)
  parser.add_argument('--profile_variant', default='bf16',
                      choices=list(VARIANTS))
  parser.add_argument('--no_memory', action='store_true',
                      help='Skip the peak-memory subprocesses.')
  parser.add_argument(peak_memory.FLAG, nargs=2, default=None,
                      metavar=('PRESET', 'VARIANT'), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.peak_memory_of:
    step, batches = build_step(*args.peak_memory_of)
    for _ in range(3):
      step(batches)
    peak_memory.report_child_peak()
    return

  results = {'device': f'CPU x{os.cpu_count()}',
             'timing': interleaved.METHOD,
             'memory_method': peak_memory.METHOD}
  if 'today' not in args.variants:
    args.variants.insert(0, 'today')
  for preset in args.presets:
    steps = {v: build_step(preset, v) for v in args.variants}
    if args.profile_dir and preset == args.presets[0]:
      results.update({
          f'profile_{args.profile_variant}_{preset}_{key}': value
          for key, value in profile(*steps[args.profile_variant],
                                    args.profile_dir).items()})
    timed = {variant: functools.partial(step, batches)
             for variant, (step, batches) in steps.items()}
    for variant, ms in interleaved.median_ms(timed, args.repeats).items():
      results[f'ms_{variant}_{preset}_preset'] = round(ms, 1)
      print(f'{preset} {variant}: {ms:.1f} ms a generator step', flush=True)
    for variant in args.variants:
      if variant != 'today':
        results[f'speedup_{variant}_{preset}_preset'] = round(
            results[f'ms_today_{preset}_preset'] /
            results[f'ms_{variant}_{preset}_preset'], 3)
    results[f'ms_poisson_batch_{preset}'] = round(poisson_batch_ms(preset), 2)
    del steps, timed
    if not args.no_memory:
      for variant in args.variants:
        mb = peak_memory.peak_rss_mb(__file__, (preset, variant))
        results[f'peak_rss_mb_{variant}_{preset}_preset'] = mb
        print(f'{preset} {variant}: peak RSS {mb:.0f} MB', flush=True)
  print(json.dumps(results))


if __name__ == '__main__':
  main()
