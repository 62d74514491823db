"""ms per critic step: the non-private step against each DP gradient engine.

Every step is one critic update as ConditionalDPGAN.critic_step makes it
(same critic, same per-record loss, gradients applied by Adam), compiled
with tf.function and timed after warm-up, as interleaved.METHOD. The
non-private baseline is plain Adam (the DP optimizer's base class) on the
batch-mean loss. `--compute_dtypes float32 bfloat16` adds each variant with
the critic in bfloat16 (`_bf16`, train.py --compute_dtype). Peak memory:
peak_memory.METHOD, a fresh process per variant (see peak_memory.py).

  python benchmarks/critic_step.py            # everything (several minutes)
  python benchmarks/critic_step.py --quick    # MNIST critic, no jacobian
  python benchmarks/critic_step.py --quick --critic_width 64 \
      --batch_sizes 64 256 512 --compute_dtypes float32 bfloat16

The last line printed is one JSON object with every figure, and
`ratio_<engine>[_bf16]_<dataset>_b<batch>` = DP step / non-private step in
the same dtype.
"""

import argparse
import functools
import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import dpgan_tf  # pylint: disable=g-import-not-at-top,unused-import
import tensorflow as tf  # pylint: disable=g-import-not-at-top

import interleaved  # pylint: disable=g-import-not-at-top
import peak_memory  # pylint: disable=g-import-not-at-top

from dpgan_tf import config as config_lib  # pylint: disable=g-import-not-at-top
from dpgan_tf import dp_gradients  # pylint: disable=g-import-not-at-top
from dpgan_tf import losses  # pylint: disable=g-import-not-at-top
from dpgan_tf import networks  # pylint: disable=g-import-not-at-top
from dpgan_tf import privacy  # pylint: disable=g-import-not-at-top

CRITICS = {'mnist': (28, 28, 1), 'cifar10': (32, 32, 3)}
NUM_CLASSES = 10


def _records(image_shape, batch_size):
  """Random (real, fake, labels, interpolation): paired critic records."""
  shape = [batch_size, *image_shape]
  return (tf.random.uniform(shape, -1.0, 1.0),
          tf.random.uniform(shape, -1.0, 1.0),
          tf.random.uniform([batch_size], 0, NUM_CLASSES, tf.int32),
          tf.random.uniform([batch_size]))


def _step(engine, critic, loss, batch_size, num_microbatches):
  """A compiled critic update: non-private ('plain') or by a DP engine."""
  variables = critic.trainable_variables
  loss_fn = lambda records: losses.critic_losses(loss, critic, *records)
  if engine == 'plain':
    optimizer = tf.keras.optimizers.legacy.Adam(2e-4, 0.5)

    def plain(records):
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(loss_fn(records))
      optimizer.apply_gradients(zip(tape.gradient(loss, variables),
                                    variables))

    return tf.function(plain)
  optimizer = privacy.DPCriticAdamOptimizer(
      1.0, 1.0, num_microbatches, tf.Variable([0, 0], dtype=tf.int64), engine,
      learning_rate=2e-4, beta_1=0.5)
  microbatch_size = batch_size // (num_microbatches or batch_size)

  def private(records):
    optimizer.minimize(dp_gradients.PrivateLoss(
        loss_fn, records, critic, microbatch_size,
        batch_size / microbatch_size,
        differentiates_inputs=loss == 'wgan_gp'), variables)

  return tf.function(private)


def build(name, dataset, batch_size, critic_width, loss):
  """Variant `name` ('<engine>[_m<microbatches>][_bf16]') of the critic step
  on `dataset`'s critic: the compiled step and its records."""
  parts = name.split('_')
  num_microbatches = next((int(p[1:]) for p in parts if p.startswith('m')),
                          None)
  dtype = 'bfloat16' if 'bf16' in parts else 'float32'
  with networks.compute_dtype(dtype):
    critic = networks.build_critic(CRITICS[dataset], NUM_CLASSES,
                                   critic_width)
  return (_step(parts[0], critic, loss, batch_size, num_microbatches),
          _records(CRITICS[dataset], batch_size))


def variant_names(quick: bool, compute_dtypes):
  """'plain', the engines and (unless quick) the jacobian at 64 and 8
  microbatches, each with '_bf16' for bfloat16."""
  names = ['plain'] + [e for e in config_lib.GRAD_ENGINES if e != 'jacobian']
  if not quick:
    names += ['jacobian_m64', 'jacobian_m8']
  suffixes = {'float32': '', 'bfloat16': '_bf16'}
  return [name + suffixes[dtype] for dtype in compute_dtypes
          for name in names]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='MNIST critic only, and no jacobian engine.')
  parser.add_argument('--repeats', type=int, default=15)
  parser.add_argument('--loss', default='hinge',
                      choices=config_lib.CRITIC_LOSSES)
  parser.add_argument('--batch_sizes', type=int, nargs='+', default=[64, 256])
  parser.add_argument('--critic_width', type=int, default=32,
                      help='Filters of the first convolution (train.py '
                      '--critic_width; the presets use 32 to 128).')
  parser.add_argument('--compute_dtypes', nargs='+', default=['float32'],
                      choices=('float32', 'bfloat16'))
  parser.add_argument('--no_memory', action='store_true',
                      help='Skip the peak-memory subprocesses.')
  parser.add_argument(peak_memory.FLAG, nargs=3, default=None,
                      metavar=('VARIANT', 'DATASET', 'BATCH'),
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.peak_memory_of:
    name, dataset, batch_size = args.peak_memory_of
    step, records = build(name, dataset, int(batch_size), args.critic_width,
                          args.loss)
    for _ in range(3):
      step(records)
    peak_memory.report_child_peak()
    return

  names = variant_names(args.quick, args.compute_dtypes)
  results = {'loss': args.loss, 'critic_width': args.critic_width,
             'device': 'GPU' if tf.config.list_physical_devices('GPU')
             else f'CPU x{os.cpu_count()}',
             'timing': interleaved.METHOD,
             'memory_method': peak_memory.METHOD}
  for dataset in CRITICS:
    if args.quick and dataset != 'mnist':
      continue
    for batch_size in args.batch_sizes:
      built = {name: build(name, dataset, batch_size, args.critic_width,
                           args.loss) for name in names}
      steps = {name: functools.partial(step, records)
               for name, (step, records) in built.items()}
      # The per-example jacobian is tens of seconds a step at batch 256.
      repeats = {name: 2 if 'jacobian_m64' in name and batch_size > 64
                 else args.repeats for name in steps}
      for name, ms in interleaved.median_ms(steps, repeats).items():
        results[f'ms_{name}_{dataset}_b{batch_size}'] = round(ms, 2)
        print(f'{name}_{dataset}_b{batch_size}: {ms:.1f} ms', flush=True)
      del built, steps
      for name in names:
        key = f'{name}_{dataset}_b{batch_size}'
        if not name.startswith('plain'):
          plain = 'plain_bf16' if name.endswith('_bf16') else 'plain'
          results[f'ratio_{key}'] = round(
              results[f'ms_{key}'] /
              results[f'ms_{plain}_{dataset}_b{batch_size}'], 3)
        if not args.no_memory:
          mb = peak_memory.peak_rss_mb(__file__, (
              name, dataset, batch_size, '--critic_width', args.critic_width,
              '--loss', args.loss))
          results[f'peak_rss_mb_{key}'] = mb
          print(f'{key}: peak RSS {mb:.0f} MB', flush=True)
  print(json.dumps(results))


if __name__ == '__main__':
  main()
