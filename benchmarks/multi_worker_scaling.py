"""Examples per second against the number of local worker processes.

Runs the same short private training once per worker count: one process
(`--strategy=default`), then N `train.py --strategy=multi_worker` processes on
this host, each with its own TF_CONFIG on loopback ports. The figure is the
median of the chief's `speed/examples_per_sec` TensorBoard scalars after the
first interval (which includes tracing). Several workers on one host share
its cores: this measures the cost of the collectives, not the scaling of a
real cluster.

  python benchmarks/multi_worker_scaling.py \
    --manual_dir=/usr/share/datasets/fashion-mnist --workers=1,2

The last line printed is one JSON object, `examples_per_sec_<n>_workers` and
`speedup_<n>_workers` (against one process).
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from dpgan_tf import cluster  # pylint: disable=g-import-not-at-top


def _commands(workers, flags, model_dir):
  """(argv, environment) of each process of a run with `workers` workers."""
  base = [sys.executable, os.path.join(REPO_ROOT, 'train.py'), *flags,
          f'--model_dir={model_dir}']
  if workers == 1:
    return [(base, dict(os.environ))]
  return [([*base, '--strategy=multi_worker'],
           {**os.environ, 'TF_CONFIG': tf_config})
          for tf_config in cluster.local_tf_configs(workers)]


def examples_per_sec(model_dir):
  """The median of a run's `speed/examples_per_sec` scalars after the
  first interval, which holds the tracing."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  speeds = []
  for path in glob.glob(os.path.join(model_dir, 'train', 'events.*')):
    for record in tf.data.TFRecordDataset(path):
      event = event_pb2.Event.FromString(record.numpy())
      speeds += [(event.step, float(tf.make_ndarray(v.tensor)))
                 for v in event.summary.value
                 if v.tag == 'speed/examples_per_sec']
  return statistics.median(s for _, s in sorted(speeds)[1:])


def measure(workers, flags, scratch):
  model_dir = os.path.join(scratch, f'{workers}_workers')
  processes = []
  for argv, env in _commands(workers, flags, model_dir):
    log = open(f'{model_dir}.{len(processes)}.log', 'w')  # pylint: disable=consider-using-with
    processes.append(subprocess.Popen(argv, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
  for process in processes:
    if process.wait() != 0:
      sys.exit(f'{workers} workers: train.py failed, see {model_dir}.*.log')
  return examples_per_sec(model_dir)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workers', default='1,2')
  parser.add_argument('--manual_dir', required=True,
                      help='Fashion-MNIST IDX files.')
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args()
  flags = ['--dataset=fashion_mnist', f'--manual_dir={args.manual_dir}',
           '--max_train_examples=6400', '--batch_size=64', '--epochs=1',
           '--noise_multiplier=1.0', '--delta=1e-5', '--seed=0',
           '--log_every=10', '--checkpoint_every=1000']
  if args.data_dir:
    flags.append(f'--data_dir={args.data_dir}')
  results = {}
  with tempfile.TemporaryDirectory() as scratch:
    for workers in (int(w) for w in args.workers.split(',')):
      results[f'examples_per_sec_{workers}_workers'] = speed = measure(
          workers, flags, scratch)
      print(f'{workers} worker(s): {speed:.1f} examples/s', flush=True)
  one = results.get('examples_per_sec_1_workers')
  if one:
    for key, speed in list(results.items()):
      workers = key.split('_')[3]
      results[f'speedup_{workers}_workers'] = speed / one
  print(json.dumps(results))


if __name__ == '__main__':
  main()
