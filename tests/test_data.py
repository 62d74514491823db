"""Datasets load offline from the raw files, in the documented ranges."""

import gzip
import hashlib
import io
import os
import re
import shutil

import subprocess
import sys
import tarfile

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import FASHION_MNIST_DIR, MNIST_DIR, REPO_ROOT
from dpgan_tf import config as config_lib
from dpgan_tf import data
from dpgan_tf import image_folder
from helpers import mock_tfds


def test_fashion_mnist_offline(fashion_mnist_small):
  split = fashion_mnist_small
  assert split.images.shape == (512, 28, 28, 1)
  assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
  assert set(np.unique(split.labels)) == set(range(10))
  assert split.spec.class_names[9] == 'Ankle boot'


def test_mnist_offline_beside_fashion_mnist(tfds_dir, fashion_mnist_small):
  """Prepared from the project's copy (data/mnist) into the data_dir Fashion-MNIST is
  prepared in: MNIST and Fashion-MNIST share IDX file names, and tfds's one
  extraction directory per data_dir once made the second dataset prepared
  there a copy of the first."""
  del fashion_mnist_small  # Fashion-MNIST is prepared in tfds_dir first.
  split = data.load_split('mnist', 'test', tfds_dir, MNIST_DIR)
  assert split.images.shape == (10000, 28, 28, 1) and len(split) == 10000
  assert split.images.max() == 255 and split.images.min() == 0
  with gzip.open(os.path.join(MNIST_DIR, 't10k-labels-idx1-ubyte.gz')) as f:
    raw_labels = np.frombuffer(f.read()[8:], np.uint8)
  np.testing.assert_array_equal(np.bincount(split.labels, minlength=10),
                                np.bincount(raw_labels, minlength=10))
  # "The first K" is tfds's fixed order, so K examples are the same each time.
  first = data.load_split('mnist', 'test', tfds_dir, MNIST_DIR,
                          max_examples=100)
  np.testing.assert_array_equal(first.images, split.images[:100])


def test_ranges_round_trip():
  images = np.array([0, 127, 255], np.uint8)
  model = data.to_model_range(images)
  np.testing.assert_allclose(model, [-1.0, 127 / 127.5 - 1, 1.0])
  np.testing.assert_allclose(data.to_unit_range(model),
                             images / 255.0, atol=1e-6)
  assert float(tf.reduce_max(data.to_unit_range(tf.constant([3.0])))) == 1.0


def test_unknown_dataset_names_the_flag():
  with pytest.raises(data.DataError, match="--dataset='svhn'"):
    data.get_spec('svhn')


def test_celeb_a_crop_keeps_the_face_square():
  frame = tf.zeros([218, 178, 3], tf.uint8)
  for name in ('celeb_a32', 'celeb_a', 'celeb_a128'):
    spec = data.get_spec(name)
    out = data.to_spec_shape(frame, (218, 178, 3), spec)
    assert out.shape == spec.image_shape and out.dtype == tf.uint8


def test_options_reshape_the_spec_and_its_cache_key():
  spec = data.get_spec('celeb_a', image_size=128, celeb_a_attribute='Smiling')
  assert spec.image_shape == (128, 128, 3)
  assert spec.class_names == ('not Smiling', 'Smiling')
  assert spec.key == 'celeb_a-128x128x3-Smiling'
  assert data.get_spec('camelyon', image_size=96).image_shape == (96, 96, 3)
  assert data.get_spec('mnist').key == 'mnist'  # Caches of before are kept.
  assert data.get_spec('mnist', image_size=32,
                       image_channels=3).key == 'mnist-32x32x3'


def test_camelyon_full_size(tmp_path):
  """--image_size=96 keeps PatchCamelyon's patches whole (mock records of
  its real features)."""
  spec = data.get_spec('camelyon', image_size=96)
  manual_dir = mock_tfds.placeholder_manual_dir(tmp_path / 'raw', spec)
  with tfds.testing.mock_data(num_examples=4):
    split = data.load_split(spec, 'train', str(tmp_path / 'tfds'),
                            manual_dir)
    small = data.load_split('camelyon', 'train', str(tmp_path / 'tfds'),
                            manual_dir)
  assert split.images.shape == (4, 96, 96, 3)
  assert small.images.shape == (4, 32, 32, 3)
  assert set(split.labels) <= {0, 1}


def test_celeb_a_attributes_are_tfds_s():
  features = tfds.builder('celeb_a').info.features['attributes']
  assert config_lib.CELEB_A_ATTRIBUTES == tuple(features.keys())


def test_tfds_dataset_takes_class_names_from_tfds_metadata():
  spec = data.get_spec('tfds:cifar10')
  assert spec.tfds_name == 'cifar10' and spec.image_shape == (32, 32, 3)
  assert spec.num_classes == 10
  # Kept at its own size where the networks build for it, else 32.
  assert data.get_spec('tfds:patch_camelyon').image_shape == (96, 96, 3)
  flowers = data.get_spec('tfds:tf_flowers')  # Photos of any size.
  assert flowers.image_shape == (32, 32, 3) and flowers.num_classes == 5
  with pytest.raises(data.DataError, match="no class label 'fine'"):
    data.get_spec('tfds:cifar10:fine')
  with pytest.raises(data.DataError, match="tfds has no dataset 'nope'"):
    data.get_spec('tfds:nope')


@pytest.mark.parametrize('dataset,files', [
    ('cifar10', ['cifar-10-binary.tar.gz']),
    ('celeb_a128', ['img_align_celeba.zip', 'list_attr_celeba.txt']),
    ('camelyon', ['camelyonpatch_level_2_split_train_x.h5.gz']),
])
def test_without_data_or_network_the_error_names_what_to_download(
    tmp_path, dataset, files):
  """Never a download (this machine has no network): the message names
  each official file, its URL and the flag to pass, and nothing is written."""
  with pytest.raises(data.DataError) as error:
    data.load_split(dataset, 'train', str(tmp_path / 'tfds'), None, 10)
  message = str(error.value)
  assert 'nothing is downloaded' in message and '--manual_dir' in message
  for name in files:
    assert name in message
  assert not (tmp_path / 'tfds').exists()
  # A manual_dir lacking a file, or holding a truncated one, is refused by
  # name before tfds starts.
  manual = tmp_path / 'raw'
  manual.mkdir()
  official = data.official_files(data.get_spec(dataset))
  with pytest.raises(data.DataError,
                     match=f'{manual / min(official)} is missing'):
    data.load_split(dataset, 'train', str(tmp_path / 'tfds'), str(manual))
  for name in official:
    (manual / name).write_bytes(b'x')
  with pytest.raises(data.DataError, match='has 1 bytes, the official file'):
    data.load_split(dataset, 'train', str(tmp_path / 'tfds'), str(manual))
  assert not (tmp_path / 'tfds').exists()


def _miniature_cifar10(manual_dir):
  """cifar-10-binary.tar.gz in the official format, 8 records a batch file,
  padded with zeros to the official size (gzip skips zero padding): tfds
  takes a file from --manual_dir by its name."""
  (name, (_, size)), = data.official_files(data.get_spec('cifar10')).items()
  rng = np.random.default_rng(0)
  archive = io.BytesIO()
  with tarfile.open(fileobj=archive, mode='w') as tar:
    contents = {f'data_batch_{i}.bin': None for i in range(1, 6)}
    contents['test_batch.bin'] = None
    for batch in contents:
      labels = np.arange(8, dtype=np.uint8)[:, None]
      contents[batch] = np.concatenate(
          [labels, rng.integers(0, 256, (8, 3072), np.uint8)], 1).tobytes()
    contents['batches.meta.txt'] = '\n'.join(
        data.DATASETS['cifar10'].class_names).encode()
    for member, content in contents.items():
      info = tarfile.TarInfo(f'cifar-10-batches-bin/{member}')
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  with open(manual_dir / name, 'wb') as f:
    f.write(gzip.compress(archive.getvalue()))
    f.truncate(size)


def test_cifar10_prepares_offline_from_its_official_file(tmp_path):
  """tfds's real preparation, from --manual_dir alone: this machine has no
  network, so any download would fail."""
  manual = tmp_path / 'raw'
  manual.mkdir()
  _miniature_cifar10(manual)
  train = data.load_split('cifar10', 'train', str(tmp_path / 'tfds'),
                          str(manual))
  assert train.images.shape == (40, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(train.labels), [5] * 8)
  # Prepared: no --manual_dir needed any more.
  test = data.load_split('cifar10', 'test', str(tmp_path / 'tfds'))
  assert len(test) == 8


def _image(path, size=(40, 30), mode='RGB', image_format='PNG'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.default_rng(len(str(path))).integers(
      0, 256, (size[1], size[0], len(mode)), np.uint8)
  Image.fromarray(pixels.squeeze(-1) if mode == 'L' else pixels, mode).save(
      path, format=image_format)


def _folder(root, per_class=20, classes=('cats', 'dogs')):
  for name in classes:
    for i in range(per_class):
      _image(os.path.join(root, name, f'{i}.png' if i % 2 else f'{i}.jpg'),
             image_format='PNG' if i % 2 else 'JPEG')
  return str(root)


def test_folder_dataset_reads_class_folders(tmp_path):
  root = _folder(tmp_path / 'pets')
  spec = data.get_spec(f'folder:{root}', image_size=32)
  assert spec.class_names == ('cats', 'dogs')
  assert spec.image_shape == (32, 32, 3) and spec.tfds_name is None
  train = data.load_split(spec, 'train')
  test = data.load_split(spec, 'test')
  assert len(train) + len(test) == 40 and len(test) >= 1
  assert train.images.shape[1:] == (32, 32, 3)
  assert set(train.labels) == {0, 1}
  # The first K are a fixed, class-mixed subset; nothing is in both splits.
  first = data.load_split(spec, 'train', max_examples=5)
  np.testing.assert_array_equal(first.images, train.images[:5])
  gray = data.get_spec(f'folder:{root}', image_channels=1)
  assert data.load_split(gray, 'test').images.shape[1:] == (32, 32, 1)


def test_folder_centre_crop_keeps_the_middle(tmp_path):
  """A wide image loses its sides: only the centred square is resized."""
  pixels = np.zeros((32, 96, 3), np.uint8)
  pixels[:, 32:64] = 255
  path = tmp_path / 'wide.png'
  Image.fromarray(pixels).save(path)
  out = image_folder.read_image(str(path), (32, 32, 3))
  assert out.min() == 255


def _bad_folder(tmp_path, case):
  root = tmp_path / case
  if case == 'not an image':
    _folder(root)
    bad = root / 'dogs' / 'notes.png'
    bad.write_text('not an image')
  elif case == 'unreadable':
    _folder(root)
    bad = root / 'cats' / 'broken.png'
    _image(bad)
    bad.write_bytes(bad.read_bytes()[:60])
  elif case == 'other format':
    _folder(root)
    bad = root / 'cats' / 'old.gif'
    Image.new('RGB', (8, 8)).save(bad, format='GIF')
  elif case == 'one class':
    _folder(root, classes=('cats',))
    bad = root
  elif case == 'empty class':
    _folder(root)
    bad = root / 'birds'
    bad.mkdir()
  elif case == 'no images':
    root.mkdir()
    (root / 'readme.txt').write_text('no class folders here')
    bad = root
  else:  # mixed channels
    _folder(root)
    bad = root / 'dogs' / 'gray.png'
    _image(bad, mode='L')
  return root, bad


@pytest.mark.parametrize('case,message', [
    ('not an image', 'is not a readable PNG or JPEG image'),
    ('unreadable', 'could not be decoded'),
    ('other format', 'is a GIF image; use PNG or JPEG'),
    ('one class', 'only one class'),
    ('empty class', 'is an empty class folder'),
    ('no images', 'holds no images'),
    ('mixed channels', 'different channel counts'),
])
def test_bad_folders_are_refused_naming_the_file(tmp_path, case, message):
  root, bad = _bad_folder(tmp_path, case)
  with pytest.raises(data.DataError) as error:
    data.load_split(data.get_spec(f'folder:{root}'), 'train')
  assert message in str(error.value) and str(bad) in str(error.value)


def test_cli_refuses_a_bad_folder_and_keeps_the_run(tmp_path):
  """train.py: exit 2 with one line naming the file, and what --model_dir
  already held left as it was."""
  root, bad = _bad_folder(tmp_path, 'mixed channels')
  model_dir = tmp_path / 'run'
  model_dir.mkdir()
  (model_dir / 'keep.txt').write_text('earlier work')
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'train.py'),
       f'--dataset=folder:{root}', f'--model_dir={model_dir}',
       '--target_epsilon=5', '--batch_size=4', '--delta=1e-3'],
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  error = [l for l in result.stderr.splitlines()
           if l.startswith('train.py: error:')]
  assert len(error) == 1 and 'different channel counts' in error[0]
  assert str(bad) in error[0]
  assert os.listdir(model_dir) == ['keep.txt']


def test_the_carried_mnist_copy_is_the_one_its_readme_names():
  """data/mnist travels with the project: its README's checksums are what a
  user checks a clone against, and the loader accepts the files."""
  with open(os.path.join(MNIST_DIR, 'README.md')) as f:
    listed = dict(re.findall(r'^\| (\S+\.gz) \| ([0-9a-f]{64}) \|', f.read(),
                             re.MULTILINE))
  assert sorted(listed) == sorted(data.DATASETS['mnist'].manual_files)
  for name, sha256 in listed.items():
    with open(os.path.join(MNIST_DIR, name), 'rb') as f:
      assert hashlib.sha256(f.read()).hexdigest() == sha256, name
  data.check_manual_dir(data.DATASETS['mnist'], MNIST_DIR)


@pytest.mark.parametrize('dataset,manual_dir,other', [
    ('mnist', FASHION_MNIST_DIR, 'fashion_mnist'),
    ('fashion_mnist', MNIST_DIR, 'mnist'),
])
def test_files_of_the_other_dataset_are_refused(tmp_path, dataset, manual_dir,
                                                other):
  # Same names, same format: only the content tells them apart.
  with pytest.raises(data.DataError,
                     match=f'is not the {dataset} file train-images-idx3-'
                     f'ubyte.gz \\(it is the {other} file: point '
                     f'--manual_dir at the {dataset} files\\)'):
    data.load_split(dataset, 'test', str(tmp_path), manual_dir, 10)
  assert os.listdir(tmp_path) == []  # nothing prepared


def test_a_well_formed_file_with_other_content_is_refused(tmp_path):
  for name in data.DATASETS['mnist'].manual_files:
    shutil.copy(os.path.join(MNIST_DIR, name), tmp_path / name)
  labels = tmp_path / 'train-labels-idx1-ubyte.gz'
  with gzip.open(labels) as f:
    content = bytearray(f.read())
  content[-1] = (content[-1] + 1) % 10  # still a valid label file
  with gzip.open(labels, 'wb') as f:
    f.write(bytes(content))
  with pytest.raises(data.DataError, match='train-labels-idx1-ubyte.gz is not '
                     'the mnist file .*its content MD5 is'):
    data.check_manual_dir(data.DATASETS['mnist'], str(tmp_path))


def test_a_directory_prepared_from_the_other_files_is_refused(tmp_path):
  """What tfds's shared extraction directory once did, done directly: tfds
  prepares "mnist" from the Fashion-MNIST files. Every later load of it is
  refused, with or without the raw files at hand."""
  tfds.load('mnist', split='test[:1]', data_dir=str(tmp_path),
            download_and_prepare_kwargs={
                'download_config': tfds.download.DownloadConfig(
                    manual_dir=FASHION_MNIST_DIR)})
  for split in ('test', 'train'):
    for manual_dir in (MNIST_DIR, None):
      with pytest.raises(data.DataError, match=re.escape(
          f'the first mnist/{split} example prepared in {tmp_path / "mnist"} '
          "is not mnist's (it is fashion_mnist's): the directory was prepared "
          f'from other files. Delete {tmp_path / "mnist"} (and any '
          'dpgan_eval/mnist-feature-classifier file')):
        data.load_split('mnist', split, str(tmp_path), manual_dir,
                        max_examples=50)
