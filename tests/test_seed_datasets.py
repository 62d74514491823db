"""Every seed dataset and a user's folder, end to end on data of the real
format: load -> a few private training steps -> export -> evaluation report.

tfds.testing.mock_data generates records with each dataset's real features
(CelebA's 218x178 frames and 40 attributes, PatchCamelyon's 96x96 patches),
with no files. The loader still insists on the official files in
--manual_dir before tfds may prepare anything (it never downloads), so each
run gets a manual_dir of sparse placeholders at the official sizes; mock_data
makes the preparation itself a no-op. Everything is tiny: these runs check
that the pieces fit (shapes, class names, caches, reports), not quality.
"""

import json
import os
import subprocess

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import REPO_ROOT  # pylint: disable=g-bad-import-order
from dpgan_tf import classifier
from dpgan_tf import config as config_lib
from dpgan_tf import data as data_lib
from dpgan_tf import evaluation
from dpgan_tf import export as export_lib
from dpgan_tf import training
from helpers import mock_tfds

MOCK_EXAMPLES = 48
SEED_DATASETS = ('cifar10', 'celeb_a32', 'celeb_a', 'celeb_a128', 'camelyon')


def _image_folder(root):
  """Two classes of PNG and JPEG images of several sizes."""
  rng = np.random.default_rng(0)
  for label, name in enumerate(('benign', 'malignant')):
    os.makedirs(root / name)
    for i in range(40):
      pixels = rng.integers(0, 128, (40 + i % 3 * 8, 36, 3), np.uint8)
      pixels[..., label] += 100  # Each class its own tint.
      Image.fromarray(pixels).save(
          root / name / f'{i}.{"png" if i % 2 else "jpg"}')
  return f'folder:{root}'


def _train_config(tmp, dataset, manual_dir, data_dir):
  """Three critic steps of the smallest networks."""
  return config_lib.TrainConfig(
      dataset=dataset, data_dir=data_dir, manual_dir=manual_dir,
      model_dir=str(tmp / 'model'), export_dir=str(tmp / 'export'),
      batch_size=16, epochs=1.0, delta=1e-3, noise_multiplier=1.0, seed=3,
      latent_dim=8, generator_width=2, critic_width=2, checkpoint_every=100,
      sample_every=100, log_every=100)


def _eval_config(tmp, c, inception_weights='none'):
  return evaluation.EvalConfig(
      export_dir=c.export_dir, dataset=c.dataset,
      output=str(tmp / 'report.json'), data_dir=c.data_dir,
      manual_dir=c.manual_dir, model_dir=c.model_dir, num_samples=20,
      fid_samples=6, inception_weights=inception_weights,
      cache_dir=str(tmp / 'cache'))


def _inception_weights(path):
  """A weights file of InceptionV3's no-top architecture (untrained: the
  ImageNet file cannot be fetched offline), for the FID path."""
  tf.keras.applications.InceptionV3(
      include_top=False, weights=None, pooling='avg',
      input_shape=(evaluation.INCEPTION_SIZE,) * 2 + (3,)).save_weights(path)
  tf.keras.backend.clear_session()
  return str(path)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """{dataset: (TrainConfig, TrainResult, report)}, each dataset trained and
  evaluated once for the whole module. CelebA 128 goes through the
  memory-mapped cache (the threshold lowered to 0); CIFAR-10's evaluation
  computes Inception FID from a weights file."""
  patch = pytest.MonkeyPatch()
  patch.setattr(classifier, 'FEATURE_TRAIN_EXAMPLES', 32)
  patch.setattr(classifier, 'DOWNSTREAM', classifier.Schedule(epochs=1))
  patch.setattr(classifier, 'FEATURE', classifier.Schedule(epochs=1))
  # InceptionV3's smallest input: the same layers and weights file, 16
  # times less compute than at 299.
  patch.setattr(evaluation, 'INCEPTION_SIZE', 75)
  out = {}
  try:
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
      for dataset in SEED_DATASETS + ('folder',):
        tmp = tmp_path_factory.mktemp(dataset)
        if dataset == 'folder':
          dataset, manual_dir = _image_folder(tmp / 'images'), None
        else:
          manual_dir = mock_tfds.placeholder_manual_dir(tmp / 'raw',
                                     data_lib.get_spec(dataset))
        patch.setattr(data_lib, 'MEMMAP_MIN_BYTES',
                      0 if dataset == 'celeb_a128' else 1 << 30)
        c = _train_config(tmp, dataset, manual_dir, str(tmp / 'tfds'))
        result = training.train(c)
        weights = (_inception_weights(tmp / 'inception.h5')
                   if dataset == 'cifar10' else 'none')
        out[dataset] = (c, result, evaluation.evaluate(
            _eval_config(tmp, c, weights)))
  finally:
    patch.undo()
  return out


@pytest.mark.parametrize('dataset', SEED_DATASETS + ('folder',))
def test_load_train_export_evaluate(runs, dataset):
  c, result, report = next(
      run for name, run in runs.items()
      if name == dataset or (dataset == 'folder' and
                             name.startswith('folder:')))
  spec = data_lib.get_spec(c.dataset)
  # A few private steps, epsilon from their ledger.
  assert result.critic_steps >= 2 and 0 < result.epsilon < float('inf')
  metadata = export_lib.read_metadata(result.export_path)
  assert metadata['dataset'] == c.dataset
  assert tuple(metadata['image_shape']) == spec.image_shape
  assert tuple(metadata['class_names']) == spec.class_names
  # The sample grids: a row per class, the class names in a margin.
  for png in (os.path.join(c.model_dir, 'samples.png'),
              report['samples_png']):
    page = Image.open(png)
    assert page.height == spec.num_classes * spec.image_shape[0]
    assert page.width > 10 * spec.image_shape[1]
  assert report['dataset'] == c.dataset
  m = report['metrics']
  assert 0 <= m['accuracy_synthetic'] <= 1 and 0 <= m['accuracy_real'] <= 1
  assert m['domain_fid'] >= 0 and 0 <= m['mia_auc'] <= 1
  feature = report['fidelity']['domain']['feature_classifier']
  assert os.path.basename(feature['path']).startswith(spec.key)
  assert 'Accuracy on' in evaluation.summary(report)
  with open(_eval_path(report)) as f:
    assert json.load(f)['metrics'] == m


def _eval_path(report):
  return os.path.splitext(report['samples_png'])[0] + '.json'


def test_inception_fid_from_a_weights_file(runs):
  report = runs['cifar10'][2]
  inception = report['fidelity']['inception']
  assert inception['available'] and inception['weights'].endswith(
      'inception.h5')
  assert report['metrics']['inception_fid'] >= 0
  assert 0 <= report['metrics']['inception_precision'] <= 1


def test_seed_shapes_and_classes(runs):
  expected = {'cifar10': ((32, 32, 3), 10), 'celeb_a32': ((32, 32, 3), 2),
              'celeb_a': ((64, 64, 3), 2), 'celeb_a128': ((128, 128, 3), 2),
              'camelyon': ((32, 32, 3), 2)}
  for dataset, (shape, classes) in expected.items():
    metadata = export_lib.read_metadata(runs[dataset][1].export_path)
    assert (tuple(metadata['image_shape']), metadata['num_classes']) == (
        shape, classes), dataset
  folder = [name for name in runs if name.startswith('folder:')][0]
  metadata = export_lib.read_metadata(runs[folder][1].export_path)
  assert metadata['class_names'] == ['benign', 'malignant']


def test_large_split_is_memory_mapped_once(runs):
  """CelebA 128 went through the cache: one build, then the same files
  mapped read-only; a damaged cache is rebuilt, never trusted."""
  c = runs['celeb_a128'][0]
  cache = os.path.join(c.data_dir, 'dpgan_cache')
  records = sorted(f for f in os.listdir(cache) if f.endswith('.json'))
  assert records, os.listdir(cache)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES), \
      pytest.MonkeyPatch.context() as patch:
    patch.setattr(data_lib, 'MEMMAP_MIN_BYTES', 0)
    spec = data_lib.get_spec('celeb_a128')
    first = data_lib.load_split(spec, 'train', c.data_dir, c.manual_dir)
    assert isinstance(first.images, np.memmap) and not first.images.flags[
        'WRITEABLE']
    assert first.images.shape == (MOCK_EXAMPLES, 128, 128, 3)
    before = np.array(first.images)
    images_file = first.images.filename
    inode = os.stat(images_file).st_ino
    with open(images_file, 'r+b') as f:  # One flipped byte.
      f.seek(1000)
      byte = f.read(1)
      f.seek(1000)
      f.write(bytes([byte[0] ^ 1]))
    again = data_lib.load_split(spec, 'train', c.data_dir, c.manual_dir)
    assert os.stat(images_file).st_ino != inode  # Rebuilt.
    np.testing.assert_array_equal(again.images, before)
    np.testing.assert_array_equal(again.labels, first.labels)


@pytest.mark.parametrize('env,message', [
    ({}, 'set DATA to the tfds data directory'),
    ({'DATA': '/nonexistent'}, 'holds no prepared cifar10' if
     tf.config.list_physical_devices('GPU') else 'no GPU visible'),
])
def test_seed_benchmarks_refuse_cleanly(tmp_path, env, message):
  """Without data or a GPU the script stops before any run, saying why."""
  result = subprocess.run(
      ['bash', os.path.join(REPO_ROOT, 'scripts', 'seed_benchmarks.sh')],
      env={'PATH': os.environ['PATH'], 'OUT': str(tmp_path / 'results'),
           **env}, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 2 and message in result.stderr
  assert not (tmp_path / 'results').exists()
