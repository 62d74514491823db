"""ms per critic step: the non-private step against each DP gradient engine.

Every step is one critic update as ConditionalDPGAN.critic_step makes it
(same critic, same per-record loss, gradients applied by Adam), compiled
with tf.function and timed after warm-up; the figure is the median of the
repeats, which are interleaved across variants (see measure). The
non-private baseline is plain Adam (the DP optimizer's base class) on the
batch-mean loss. Peak memory, measured in separate untimed steps: GPU
allocator peak (tf.config.experimental.get_memory_info) when a GPU is
visible, else the peak process RSS sampled every millisecond, above the RSS
just before them ('rss_delta'; allocator caching can hide reuse, so it is a
lower bound).

  python benchmarks/critic_step.py            # everything (several minutes)
  python benchmarks/critic_step.py --quick    # MNIST critic, no jacobian

The last line printed is one JSON object with every figure, and
`ratio_<engine>_<dataset>_b<batch>` = DP step / non-private step.
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import tensorflow as tf  # pylint: disable=g-import-not-at-top

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


class _PeakMemory:
  """Peak memory while the context is open, in MB, above its start."""

  def __init__(self):
    self.gpu = bool(tf.config.list_physical_devices('GPU'))
    self.method = 'gpu_peak' if self.gpu else 'rss_delta'
    self.peak_mb = 0.0

  @staticmethod
  def _rss():
    with open('/proc/self/statm') as f:
      return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

  def _sample(self):
    while not self._done.is_set():
      self._peak = max(self._peak, self._rss())
      time.sleep(0.001)

  def __enter__(self):
    if self.gpu:
      tf.config.experimental.reset_memory_stats('GPU:0')
      self._start = tf.config.experimental.get_memory_info('GPU:0')['current']
    else:
      self._start = self._peak = self._rss()
      self._done = threading.Event()
      self._thread = threading.Thread(target=self._sample, daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *unused_exc):
    if self.gpu:
      peak = tf.config.experimental.get_memory_info('GPU:0')['peak']
    else:
      self._done.set()
      self._thread.join()
      peak = self._peak
    self.peak_mb = (peak - self._start) / 2**20


def measure(steps, records, repeats):
  """{name: median ms} over interleaved rounds, after one warm-up round.

  Each round runs every step once, so load from other processes on a shared
  machine hits all variants alike and the ratios stay fair. A step listed in
  `repeats` (name -> count) joins only that many rounds.
  """
  times = {name: [] for name in steps}
  for name, step in steps.items():
    step(records)
  for round_index in range(max(repeats.values())):
    for name, step in steps.items():
      if round_index < repeats[name]:
        start = time.perf_counter()
        step(records)
        times[name].append(1e3 * (time.perf_counter() - start))
  return {name: statistics.median(t) for name, t in times.items()}


def peak_memory(step, records):
  """Peak memory of two more steps (see _PeakMemory)."""
  with _PeakMemory() as memory:
    for _ in range(2):
      step(records)
  return memory


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
                      '--critic_width; the presets use 32 or 64).')
  args = parser.parse_args()

  engines = [e for e in config_lib.GRAD_ENGINES if e != 'jacobian']
  variants = [('plain', None)] + [(e, None) for e in engines]
  if not args.quick:
    variants += [('jacobian_m64', 64), ('jacobian_m8', 8)]
  results = {'loss': args.loss, 'critic_width': args.critic_width,
             'device': 'GPU' if tf.config
                                             .list_physical_devices('GPU')
             else f'CPU x{os.cpu_count()}'}
  for dataset, image_shape in CRITICS.items():
    if args.quick and dataset != 'mnist':
      continue
    for batch_size in args.batch_sizes:
      records = _records(image_shape, batch_size)
      steps = {}
      for name, num_microbatches in variants:
        critic = networks.build_critic(image_shape, NUM_CLASSES,
                                       args.critic_width)
        steps[name] = _step(name.split('_')[0], critic, args.loss,
                            batch_size, num_microbatches)
      # The per-example jacobian is tens of seconds a step at batch 256.
      repeats = {name: 2 if name == 'jacobian_m64' and batch_size > 64
                 else args.repeats for name in steps}
      for name, ms in measure(steps, records, repeats).items():
        key = f'{name}_{dataset}_b{batch_size}'
        memory = peak_memory(steps[name], records)
        results[f'ms_{key}'] = round(ms, 2)
        results[f'peak_mb_{key}'] = round(memory.peak_mb, 1)
        results['memory_method'] = memory.method
        print(f'{key}: {ms:.1f} ms, peak {memory.peak_mb:.1f} MB', flush=True)
      plain = results[f'ms_plain_{dataset}_b{batch_size}']
      for name, _ in variants[1:]:
        key = f'{name}_{dataset}_b{batch_size}'
        results[f'ratio_{key}'] = round(results[f'ms_{key}'] / plain, 3)
  print(json.dumps(results))


if __name__ == '__main__':
  main()
