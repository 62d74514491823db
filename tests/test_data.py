"""Datasets load offline from the raw files, in the documented ranges."""

import gzip
import hashlib
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import FASHION_MNIST_DIR, MNIST_DIR
from dpgan_tf import data


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
  for size in (32, 64):
    out = data._center_crop_resize(frame, size)  # pylint: disable=protected-access
    assert out.shape == (size, size, 3) and out.dtype == tf.uint8


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
