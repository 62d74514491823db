"""Shared fixtures: an offline tfds directory prepared once per test session."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# Before any test module imports TensorFlow: the package sets TensorFlow's
# CPU-kernel default (oneDNN on x86) the way train.py and eval.py get it, so
# the in-process tests run the kernels users run.
import dpgan_tf  # pylint: disable=g-import-not-at-top,unused-import
import pytest  # pylint: disable=g-import-not-at-top

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The project's own copy, so that a clone in any directory passes offline.
MNIST_DIR = os.path.join(REPO_ROOT, 'data', 'mnist')


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  """A tfds data_dir; Fashion-MNIST is prepared into it on first use.

  Set DPGAN_TEST_TFDS_DIR to reuse prepared directories across sessions:
  each pytest-xdist worker gets its own subdirectory, so two workers never
  prepare a dataset into one directory at once.
  """
  reused = os.environ.get('DPGAN_TEST_TFDS_DIR')
  if reused:
    return os.path.join(reused, os.environ.get('PYTEST_XDIST_WORKER', 'main'))
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def fashion_mnist_small(tfds_dir):
  """The first 512 Fashion-MNIST training examples, in memory."""
  from dpgan_tf import data  # pylint: disable=g-import-not-at-top
  return data.load_split('fashion_mnist', 'train', tfds_dir, FASHION_MNIST_DIR,
                         max_examples=512)
