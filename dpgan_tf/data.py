"""Labelled image datasets, held in memory as uint8 for private sampling.

DP-SGD's guarantee assumes each critic step sees a *random subsample* of the
training set (Poisson sampling: every example independently with probability
q). That needs random access to the whole training set, so a split is loaded
once into memory as uint8 (4x smaller than float) and batches are gathered by
index; see `batching.py`.

Datasets come from TensorFlow Datasets. `manual_dir` prepares MNIST and
Fashion-MNIST offline from the four IDX files (on Debian, Fashion-MNIST is the
package `dataset-fashion-mnist` in /usr/share/datasets/fashion-mnist).
"""

import dataclasses
import gzip
import hashlib
import os
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the networks need to know about a dataset."""
  name: str
  tfds_name: str
  image_shape: Tuple[int, int, int]
  num_classes: int
  class_names: Tuple[str, ...]
  # Files that must be in --manual_dir for offline preparation (None: tfds's
  # own manual instructions apply), and the MD5 of each one's uncompressed
  # content: MNIST and Fashion-MNIST use the same file names and format, so
  # only the content tells one from the other.
  manual_files: Optional[Tuple[str, ...]] = None
  manual_md5: Optional[Tuple[str, ...]] = None
  # MD5 of the first image of 'train' and of 'test' in tfds's (deterministic)
  # order. A prepared directory built from another dataset's files is then
  # caught whatever the source: MNIST and Fashion-MNIST share file names, and
  # tfds's one extraction directory per data_dir once built the second of
  # them prepared offline from the first one's files.
  first_image_md5: Optional[Tuple[str, str]] = None


_IDX_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
              't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')

DATASETS = {
    'mnist': DatasetSpec(
        'mnist', 'mnist', (28, 28, 1), 10, tuple(str(i) for i in range(10)),
        _IDX_FILES, ('6bbc9ace898e44ae57da46a324031adb',
                     'a25bea736e30d166cdddb491f175f624',
                     '2646ac647ad5339dbf082846283269ea',
                     '27ae3e4e09519cfbb04c329615203637'),
        ('23c7b5901e13799fff07c6b83a99a650',
         '48b8e25e9eb9fd6551102336352bc5b0')),
    'fashion_mnist': DatasetSpec(
        'fashion_mnist', 'fashion_mnist', (28, 28, 1), 10,
        ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
         'Shirt', 'Sneaker', 'Bag', 'Ankle boot'), _IDX_FILES,
        ('f4a8712d7a061bf5bd6d2ca38dc4d50a', '9018921c3c673c538a1fc5bad174d6f9',
         '8181f5470baa50b63fa0f6fddb340f0a', '15d484375f8d13e6eb1aabb0c3f46965'),
        ('444a67caf9835200591492a238bc23bd',
         'e0e231b017472f2adf2dccbf62c3b363')),
    'cifar10': DatasetSpec(
        'cifar10', 'cifar10', (32, 32, 3), 10,
        ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
         'horse', 'ship', 'truck')),
    # CelebA: the binary attribute CELEB_A_ATTRIBUTE is the class.
    'celeb_a': DatasetSpec('celeb_a', 'celeb_a', (64, 64, 3), 2,
                           ('not Male', 'Male')),
    'celeb_a32': DatasetSpec('celeb_a32', 'celeb_a', (32, 32, 3), 2,
                             ('not Male', 'Male')),
}
CELEB_A_ATTRIBUTE = 'Male'


class DataError(ValueError):
  """A dataset could not be read; the message names the file or flag."""


@dataclasses.dataclass
class LabeledImages:
  """A split in memory: uint8 images [N, H, W, C] and int32 labels [N]."""
  images: np.ndarray
  labels: np.ndarray
  spec: DatasetSpec

  def __len__(self):
    return len(self.labels)


def get_spec(dataset: str) -> DatasetSpec:
  if dataset not in DATASETS:
    raise DataError(f'--dataset={dataset!r} is not supported; choose one of '
                    f'{sorted(DATASETS)}.')
  return DATASETS[dataset]


def check_manual_dir(spec: DatasetSpec, manual_dir: str) -> None:
  """Fails with a message naming the file when the raw files are unusable.

  tfds would otherwise fail deep inside preparation (or, worse, succeed on a
  truncated file and silently train on fewer examples).
  """
  if not os.path.isdir(manual_dir):
    raise DataError(f'--manual_dir={manual_dir} is not a directory.')
  if spec.manual_files is None:
    return
  for name, md5 in zip(spec.manual_files, spec.manual_md5):
    path = os.path.join(manual_dir, name)
    if not os.path.isfile(path):
      raise DataError(f'--manual_dir: {path} is missing (expected the four '
                      f'IDX files {", ".join(spec.manual_files)}).')
    _check_content(spec, name, path, md5, _check_idx_file(path))


def _check_content(spec: DatasetSpec, name: str, path: str, md5: str,
                   content: bytes) -> None:
  """A well-formed file of another dataset would be trained on silently."""
  digest = hashlib.md5(content).hexdigest()
  if digest == md5:
    return
  other = [s.name for s in DATASETS.values()
           if s.manual_files and name in s.manual_files and
           s.manual_md5[s.manual_files.index(name)] == digest]
  what = (f'it is the {other[0]} file: point --manual_dir at the '
          f'{spec.name} files' if other else
          f'its content MD5 is {digest}, the official file\'s is {md5}')
  raise DataError(f'--manual_dir: {path} is not the {spec.name} file {name} '
                  f'({what}).')


def _check_idx_file(path: str) -> bytes:
  """Verifies an IDX(.gz) file's header against its length; returns the
  uncompressed content."""
  if os.path.getsize(path) == 0:
    raise DataError(f'--manual_dir: {path} is empty.')
  try:
    with gzip.open(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise DataError(f'--manual_dir: {path} is empty or corrupt ({e}).') from e
  if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 8:
    raise DataError(f'--manual_dir: {path} is not an IDX uint8 file.')
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(f'--manual_dir: {path} is truncated (short header).')
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
  if len(data) != header + int(np.prod(dims)):
    raise DataError(f'--manual_dir: {path} is truncated or corrupt: header '
                    f'says {dims}, file holds {len(data) - header} bytes of '
                    'data.')
  return data


def _center_crop_resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """CelebA's faces sit in the centre 140x140 of the 218x178 frames."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  crop = 140
  image = tf.image.crop_to_bounding_box(image, (h - crop) // 2, (w - crop) // 2,
                                        crop, crop)
  image = tf.image.resize(image, (size, size), antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def load_split(dataset: str,
               split: str,
               data_dir: Optional[str] = None,
               manual_dir: Optional[str] = None,
               max_examples: Optional[int] = None) -> LabeledImages:
  """Loads `split` ('train' or 'test') of `dataset` into memory.

  Args:
    dataset: a key of DATASETS.
    split: tfds split name.
    data_dir: the tfds directory (None: tfds's default).
    manual_dir: raw files for offline preparation.
    max_examples: keep only the first K examples (smoke runs).

  Returns:
    LabeledImages with uint8 images and int32 labels.
  """
  spec = get_spec(dataset)
  if manual_dir:
    check_manual_dir(spec, manual_dir)
  root = data_dir or tfds.core.constants.DATA_DIR
  ds = _load_tfds(spec, split, data_dir, root, manual_dir, max_examples)
  images, labels = _read_into_memory(spec, split, _image_label_pairs(spec, ds))
  _check_first_image(spec, split, images[0],
                     os.path.join(root, spec.tfds_name))
  return LabeledImages(images, labels, spec)


def _offline_prepare_kwargs(spec: DatasetSpec, root: str,
                            manual_dir: Optional[str]) -> dict:
  """tfds.load kwargs that prepare from `manual_dir` (none without one).

  tfds extracts manual files to <download_dir>/extracted/GZIP.<file name>
  and reuses what it finds there. MNIST and Fashion-MNIST share the file
  names, so with tfds's one download_dir per data_dir the second dataset
  prepared would be built from the first one's images: each dataset gets its
  own.
  """
  if not manual_dir:
    return {}
  return {'download_and_prepare_kwargs': {
      'download_dir': os.path.join(root, 'downloads', spec.tfds_name),
      'download_config': tfds.download.DownloadConfig(manual_dir=manual_dir),
  }}


def _load_tfds(spec: DatasetSpec, split: str, data_dir: Optional[str],
               root: str, manual_dir: Optional[str],
               max_examples: Optional[int]) -> tf.data.Dataset:
  """The split's tfds examples, prepared first if need be.

  tfds raises many unrelated types when it cannot prepare or read; they all
  become one DataError naming the flag to look at.
  """
  tfds_split = split if not max_examples else f'{split}[:{max_examples}]'
  kwargs = _offline_prepare_kwargs(spec, root, manual_dir)
  tfds.disable_progress_bar()
  try:
    return tfds.load(spec.tfds_name, split=tfds_split,
                     data_dir=data_dir, shuffle_files=False, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    where = f'--manual_dir={manual_dir}' if manual_dir else (
        f'--data_dir={data_dir}')
    raise DataError(f'could not load {spec.name}/{split} ({where}): '
                    f'{type(e).__name__}: {e}') from e


def _image_label_pairs(spec: DatasetSpec,
                       ds: tf.data.Dataset) -> tf.data.Dataset:
  """(uint8 image, int32 class) pairs; CelebA's class is CELEB_A_ATTRIBUTE,
  its faces cropped and resized to the spec's size."""
  if spec.tfds_name == 'celeb_a':
    size = spec.image_shape[0]
    return ds.map(lambda ex: (_center_crop_resize(ex['image'], size),
                              tf.cast(ex['attributes'][CELEB_A_ATTRIBUTE],
                                      tf.int32)),
                  num_parallel_calls=tf.data.AUTOTUNE)
  return ds.map(lambda ex: (ex['image'], tf.cast(ex['label'], tf.int32)))


def _read_into_memory(spec: DatasetSpec, split: str,
                      ds: tf.data.Dataset) -> Tuple[np.ndarray, np.ndarray]:
  """(uint8 images, int32 labels) of the whole split, shape checked.

  Poisson sampling needs random access to every example (module doc).
  """
  images, labels = [], []
  for x, y in ds.batch(4096).as_numpy_iterator():
    images.append(x)
    labels.append(y)
  if not images:
    raise DataError(f'{spec.name}/{split} is empty.')
  images = np.concatenate(images)
  if images.shape[1:] != spec.image_shape:
    raise DataError(f'{spec.name}/{split}: images have shape '
                    f'{images.shape[1:]}, expected {spec.image_shape}.')
  return images, np.concatenate(labels).astype(np.int32)


def _check_first_image(spec: DatasetSpec, split: str, image: np.ndarray,
                       prepared_dir: str) -> None:
  """The split's first image must be the dataset's (see first_image_md5);
  every load_split slice starts there."""
  if spec.first_image_md5 is None:
    return
  expected = spec.first_image_md5[('train', 'test').index(split)]
  digest = hashlib.md5(image.tobytes()).hexdigest()
  if digest == expected:
    return
  other = [s.name for s in DATASETS.values()
           if s.first_image_md5 and digest in s.first_image_md5]
  what = (f'it is {other[0]}\'s' if other else
          f'its MD5 is {digest}, the official one\'s is {expected}')
  raise DataError(
      f'the first {spec.name}/{split} example prepared in {prepared_dir} is '
      f'not {spec.name}\'s ({what}): the directory was prepared from other '
      f'files. Delete {prepared_dir} (and any dpgan_eval/{spec.name}-feature-'
      'classifier file eval.py made from it) and run again.')


def split_size(dataset: str, split: str, data_dir: Optional[str] = None) -> int:
  """Examples in a prepared split, from tfds metadata without reading them.

  tfds refuses a slice past the end of a split with a message about slices;
  callers check ranges against this first to name the flag instead.
  """
  builder = tfds.builder(get_spec(dataset).tfds_name, data_dir=data_dir)
  return builder.info.splits[split].num_examples


def to_model_range(images) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [-1, 1], the generator's tanh range."""
  return tf.cast(images, tf.float32) / 127.5 - 1.0


def to_unit_range(images) -> tf.Tensor:
  """float32 [-1, 1] -> float32 [0, 1], the exported image range."""
  return tf.clip_by_value((images + 1.0) / 2.0, 0.0, 1.0)
