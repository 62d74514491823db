"""Peak resident memory of CelebA 128 for private training, held in memory
vs memory-mapped (data.MEMMAP_MIN_BYTES, array_cache.py).

Each case runs in a fresh process (peak RSS is per process): it loads N
CelebA 128x128 training examples of tfds's mock data (the real features:
218x178 frames, cropped and resized as the real ones are), then draws
--steps Poisson batches of --batch_size as the critic's sampler does. The
memory-mapped case builds its cache in one process and reads it in
another, as a resumed or second run would. Several N show how each grows
with the training set: in memory by N x 48 KiB, memory-mapped not with N.

  python benchmarks/dataset_memory.py --examples=2000,8000

Prints one line per case: N, mode, peak RSS (VmHWM, as peak_memory.py
measures it) and, at the end of the process, its anonymous (heap) and
file-backed resident memory.
File-backed pages of the mapping are page cache the kernel can drop.
"""

import json
import os
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, 'tests'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,g-bad-import-order
from absl import app
from absl import flags
import peak_memory
# pylint: enable=g-import-not-at-top,g-bad-import-order

flags.DEFINE_list('examples', ['2000', '8000'], 'Training set sizes N.')
flags.DEFINE_integer('steps', 200, 'Poisson batches drawn per case.')
flags.DEFINE_integer('batch_size', 64, 'Expected batch size.')
flags.DEFINE_string('case', None, 'Internal: run one case in this process '
                    '(MODE,N,DATA_DIR).')
FLAGS = flags.FLAGS

_MIB = 1 << 20


def _run_case(mode: str, n: int, data_dir: str) -> dict:
  """Loads and samples in this process; returns its memory figures."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from dpgan_tf import batching  # pylint: disable=g-import-not-at-top
  from dpgan_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  from helpers import mock_tfds  # pylint: disable=g-import-not-at-top
  data_lib.MEMMAP_MIN_BYTES = 0 if mode != 'memory' else 1 << 62
  spec = data_lib.get_spec('celeb_a128')
  manual_dir = mock_tfds.placeholder_manual_dir(
      os.path.join(data_dir, 'raw'), spec)
  with tfds.testing.mock_data(num_examples=n):
    split = data_lib.load_split(spec, 'train', data_dir, manual_dir)
  sampler = batching.CriticBatchSampler(split, FLAGS.batch_size, 'poisson',
                                        seed=0)
  checksum = 0
  for step in range(FLAGS.steps):
    images, _ = sampler.batch(step)
    checksum += int(images[:, 0, 0, 0].sum())
  return {'examples': n, 'mode': mode,
          'memory_mapped': isinstance(split.images, np.memmap),
          'peak_rss_mib': peak_memory.status_mb('VmHWM'),
          'rss_anon_mib': peak_memory.status_mb('RssAnon'),
          'rss_file_mib': peak_memory.status_mb('RssFile'),
          'checksum': checksum}


def _in_subprocess(mode: str, n: int, data_dir: str) -> dict:
  out = subprocess.run(
      [sys.executable, os.path.abspath(__file__), f'--case={mode},{n},'
       f'{data_dir}', f'--steps={FLAGS.steps}',
       f'--batch_size={FLAGS.batch_size}'],
      capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if FLAGS.case:
    mode, n, data_dir = FLAGS.case.split(',', 2)
    print(json.dumps(_run_case(mode, int(n), data_dir)))
    return
  print(f'CelebA 128x128x3 (mock data), {FLAGS.steps} Poisson batches of '
        f'{FLAGS.batch_size}; MiB')
  print('N        bytes(MiB)  mode                 peak_rss  anon   file')
  for n in (int(x) for x in FLAGS.examples):
    with tempfile.TemporaryDirectory(prefix='dpgan-memory-') as data_dir:
      # 'memmap_build' writes the cache; 'memmap_reuse' maps it again.
      for mode in ('memory', 'memmap_build', 'memmap_reuse'):
        r = _in_subprocess(mode, n, data_dir)
        assert r['memory_mapped'] == (mode != 'memory'), r
        print(f'{n:<8d} {n * 128 * 128 * 3 / _MIB:10.0f}  {mode:<20s} '
              f'{r["peak_rss_mib"]:8.0f} {r["rss_anon_mib"]:6.0f} '
              f'{r["rss_file_mib"]:6.0f}', flush=True)


if __name__ == '__main__':
  app.run(main)
