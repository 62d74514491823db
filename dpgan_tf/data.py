"""Labelled image datasets, held as uint8 arrays for private sampling.

DP-SGD's guarantee assumes each critic step sees a *random subsample* of the
training set (Poisson sampling: every example independently with probability
q). That needs random access to the whole training set, so a split is read
once into a uint8 array (4x smaller than float) and batches are gathered by
index; see `batching.py`. A split of MEMMAP_MIN_BYTES or more (CelebA at
128x128 is ~8 GB) is instead written once to a file next to the tfds data
and memory-mapped (`array_cache.py`), so that RAM stays bounded.

`get_spec` is the one registry of datasets: the seed datasets of DATASETS
(TensorFlow Datasets), `tfds:NAME[:LABEL_KEY]` for any tfds image
classification dataset, and `folder:DIR` for the user's own images
(`image_folder.py`). Images whose size differs from --image_size are
centre-cropped to a square and resized; --image_channels converts colour.

Nothing is ever downloaded: a tfds dataset that is not prepared in
--data_dir is prepared from its official files in --manual_dir (tfds takes a
file named as in its checksums from there instead of fetching its URL), and
without them the error names each file, where it comes from and where to put
it. On Debian, Fashion-MNIST is the package `dataset-fashion-mnist` in
/usr/share/datasets/fashion-mnist.
"""

import dataclasses
import gzip
import hashlib
import os
import re
from typing import Optional, Tuple, Union

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from dpgan_tf import array_cache
from dpgan_tf import config as config_lib
from dpgan_tf import image_folder

TFDS_PREFIX = 'tfds:'
# Splits at least this large are memory-mapped from a file (module doc).
MEMMAP_MIN_BYTES = 1 << 30
# The side of tfds: and folder: images whose own size the networks do not
# build for (config.supported_image_size).
DEFAULT_IMAGE_SIZE = 32
_READ_BATCH = 256


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the loader and the networks need to know about a dataset."""
  name: str
  # The tfds dataset, or None for a folder: dataset.
  tfds_name: Optional[str]
  image_shape: Tuple[int, int, int]
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
  image_key: str = 'image'
  label_key: str = 'label'
  # CelebA: this binary attribute is the class.
  attribute: Optional[str] = None
  # The side of the centred square cut before resizing (None: the largest
  # one). CelebA's faces sit in the centre 140x140 of its 218x178 frames.
  crop: Optional[int] = None
  # The user's image folder (folder: datasets).
  folder: Optional[str] = None
  # What --image_size, --image_channels and --celeb_a_attribute changed from
  # the dataset's own, as a file-name suffix: caches of derived data (the
  # memory-mapped arrays, eval.py's feature classifier) are keyed by it.
  variant: str = ''

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def key(self) -> str:
    """A file-name-safe name for what the images and labels are."""
    name = self.name
    if self.folder is not None:
      name = 'folder-' + hashlib.md5(
          os.path.abspath(self.folder).encode()).hexdigest()[:12]
    return re.sub(r'[^A-Za-z0-9_.-]', '_', name) + self.variant


_IDX_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
              't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')

DATASETS = {
    'mnist': DatasetSpec(
        'mnist', 'mnist', (28, 28, 1), tuple(str(i) for i in range(10)),
        _IDX_FILES, ('6bbc9ace898e44ae57da46a324031adb',
                     'a25bea736e30d166cdddb491f175f624',
                     '2646ac647ad5339dbf082846283269ea',
                     '27ae3e4e09519cfbb04c329615203637'),
        ('23c7b5901e13799fff07c6b83a99a650',
         '48b8e25e9eb9fd6551102336352bc5b0')),
    'fashion_mnist': DatasetSpec(
        'fashion_mnist', 'fashion_mnist', (28, 28, 1),
        ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
         'Shirt', 'Sneaker', 'Bag', 'Ankle boot'), _IDX_FILES,
        ('f4a8712d7a061bf5bd6d2ca38dc4d50a', '9018921c3c673c538a1fc5bad174d6f9',
         '8181f5470baa50b63fa0f6fddb340f0a', '15d484375f8d13e6eb1aabb0c3f46965'),
        ('444a67caf9835200591492a238bc23bd',
         'e0e231b017472f2adf2dccbf62c3b363')),
    'cifar10': DatasetSpec(
        'cifar10', 'cifar10', (32, 32, 3),
        ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
         'horse', 'ship', 'truck')),
    # CelebA at 32, 64 and 128: --celeb_a_attribute is the class.
    **{name: DatasetSpec(name, 'celeb_a', (size, size, 3),
                         ('not Male', 'Male'), attribute='Male', crop=140)
       for name, size in (('celeb_a32', 32), ('celeb_a', 64),
                          ('celeb_a128', 128))},
    # PatchCamelyon's 96x96 patches at 32x32, as DPImageBench uses them
    # (--image_size=96 keeps them whole). Label 1: tumour tissue in the
    # centre 32x32.
    'camelyon': DatasetSpec('camelyon', 'patch_camelyon', (32, 32, 3),
                            ('no tumour', 'tumour')),
}


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


def get_spec(dataset: str,
             image_size: Optional[int] = None,
             image_channels: Optional[int] = None,
             celeb_a_attribute: str = 'Male',
             data_dir: Optional[str] = None) -> DatasetSpec:
  """The dataset --dataset names, shaped by the other flags (module doc)."""
  if dataset.startswith(image_folder.PREFIX):
    spec = _folder_spec(dataset, image_channels)
  elif dataset.startswith(TFDS_PREFIX):
    spec = _tfds_spec(dataset, data_dir)
  elif dataset in DATASETS:
    spec = DATASETS[dataset]
  else:
    raise DataError(f'--dataset={dataset!r} is not supported; choose one of '
                    f'{sorted(DATASETS)}, {image_folder.PREFIX}DIR or '
                    f'{TFDS_PREFIX}NAME[:LABEL_KEY].')
  return _with_options(spec, image_size, image_channels, celeb_a_attribute)


def dataset_options(c) -> dict:
  """The flags besides --dataset that shape its images and classes (of a
  TrainConfig); the export records them, so that eval.py reads the data as
  the run did."""
  return {'image_size': c.image_size, 'image_channels': c.image_channels,
          'celeb_a_attribute': c.celeb_a_attribute}


def _folder_spec(dataset: str, image_channels: Optional[int]) -> DatasetSpec:
  directory = dataset[len(image_folder.PREFIX):]
  try:
    class_names, channels = image_folder.describe(directory, image_channels)
  except image_folder.FolderError as e:
    raise DataError(str(e)) from e
  return DatasetSpec(dataset, None, (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE,
                                     channels), class_names, folder=directory)


def _builder(name: str, data_dir: Optional[str]):
  """tfds's builder, without its look-ups of metadata on GCS: a network
  access, which offline may wait for a DNS timeout."""
  tfds.core.utils.gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access
  try:
    return tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'--dataset: tfds has no dataset {name!r} '
                    f'({type(e).__name__}: {e}).') from e


def _tfds_spec(dataset: str, data_dir: Optional[str]) -> DatasetSpec:
  """tfds:NAME[:LABEL_KEY]: its first image feature, classes from its
  ClassLabel feature LABEL_KEY (default 'label')."""
  name, _, label_key = dataset[len(TFDS_PREFIX):].partition(':')
  label_key = label_key or 'label'
  features = _builder(name, data_dir).info.features
  images = [k for k, f in features.items()
            if isinstance(f, tfds.features.Image)]
  labels = [k for k, f in features.items()
            if isinstance(f, tfds.features.ClassLabel)]
  if not images:
    raise DataError(f'--dataset={dataset}: {name} has no image feature.')
  if label_key not in labels:
    raise DataError(f'--dataset={dataset}: {name} has no class label '
                    f'{label_key!r}; its class labels are {labels}.')
  height, width, channels = features[images[0]].shape
  size = (height if height == width and height and
          config_lib.supported_image_size(height) else DEFAULT_IMAGE_SIZE)
  return DatasetSpec(dataset, name, (size, size, channels or 3),
                     tuple(features[label_key].names), image_key=images[0],
                     label_key=label_key)


def _with_options(spec: DatasetSpec, image_size: Optional[int],
                  image_channels: Optional[int],
                  attribute: str) -> DatasetSpec:
  """The spec at --image_size and --image_channels, and CelebA's class set
  to --celeb_a_attribute (other datasets have no attributes); `variant`
  names what changed."""
  height, _, channels = spec.image_shape
  shape = (image_size or height, image_size or height,
           image_channels or channels)
  variant = spec.variant
  changes = {}
  if shape != spec.image_shape:
    variant += '-{}x{}x{}'.format(*shape)
    changes['image_shape'] = shape
  if spec.attribute is not None and attribute != spec.attribute:
    variant += f'-{attribute}'
    changes.update(attribute=attribute,
                   class_names=(f'not {attribute}', attribute))
  return dataclasses.replace(spec, variant=variant, **changes)


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


def load_split(dataset: Union[str, DatasetSpec],
               split: str,
               data_dir: Optional[str] = None,
               manual_dir: Optional[str] = None,
               max_examples: Optional[int] = None) -> LabeledImages:
  """Reads `split` ('train' or 'test') of a dataset.

  Args:
    dataset: a spec (get_spec), or a name for its default options.
    split: tfds split name.
    data_dir: the tfds directory (None: tfds's default).
    manual_dir: official files for offline preparation.
    max_examples: keep only the first K examples (smoke runs).

  Returns:
    LabeledImages with uint8 images (in memory, or memory-mapped) and int32
    labels.
  """
  spec = (dataset if isinstance(dataset, DatasetSpec) else
          get_spec(dataset, data_dir=data_dir))
  if spec.folder is not None:
    try:
      images, labels = image_folder.read_split(spec.folder, split,
                                               spec.image_shape, max_examples)
    except image_folder.FolderError as e:
      raise DataError(str(e)) from e
    return LabeledImages(images, labels, spec)
  root = data_dir or tfds.core.constants.DATA_DIR
  builder = prepared_builder(spec, data_dir, manual_dir)
  images, labels = _read_tfds(spec, split, builder, root, max_examples)
  _check_first_image(spec, split, images[0],
                     os.path.join(root, spec.tfds_name))
  return LabeledImages(images, labels, spec)


def check_available(spec: DatasetSpec, data_dir: Optional[str],
                    manual_dir: Optional[str]):
  """The spec's tfds builder (None for a folder), once it is known that its
  data is prepared or can be from --manual_dir; raises DataError naming
  what to download and where to put it otherwise."""
  if spec.folder is not None:
    return None
  if manual_dir:
    check_manual_dir(spec, manual_dir)
  builder = _builder(spec.tfds_name, data_dir)
  if not builder.is_prepared():
    _check_offline_files(spec, data_dir or tfds.core.constants.DATA_DIR,
                         manual_dir)
  return builder


def official_files(spec: DatasetSpec) -> dict:
  """{file name: (URL, size in bytes)} of what tfds would download to
  prepare the dataset: what --manual_dir must hold."""
  builder = tfds.builder_cls(spec.tfds_name)
  return {info.filename: (url, int(info.size))
          for url, info in (builder.url_infos or {}).items() if info.filename}


def _check_offline_files(spec: DatasetSpec, root: str,
                         manual_dir: Optional[str]) -> None:
  """Refuses to go on unless every file tfds would download is in
  --manual_dir, at its official size (tfds uses a file found there without
  looking at its checksum, and downloads any other)."""
  files = official_files(spec)
  listing = '; '.join(f'{name} ({size} bytes) from {url}'
                      for name, (url, size) in sorted(files.items()))
  how = (f'download {listing}, put them in one directory and pass it as '
         '--manual_dir' if files else
         f'follow tfds\'s instructions for {spec.tfds_name} and pass the '
         'directory as --manual_dir')
  if not manual_dir:
    raise DataError(f'--data_dir={root} holds no prepared {spec.tfds_name} '
                    f'and nothing is downloaded: {how} (see '
                    'docs/datasets.md).')
  if spec.manual_files is not None:
    # check_manual_dir checked their content, which tells more than sizes
    # (Debian's recompressed copies differ in size from the official ones).
    return
  for name, (url, size) in sorted(files.items()):
    path = os.path.join(manual_dir, name)
    if not os.path.isfile(path):
      raise DataError(f'--manual_dir: {path} is missing; {spec.tfds_name} '
                      f'needs every one of its files there: {how}.')
    if os.path.getsize(path) != size:
      raise DataError(f'--manual_dir: {path} has {os.path.getsize(path)} '
                      f'bytes, the official file {size}: download it again '
                      f'from {url}.')


def prepared_builder(spec: DatasetSpec, data_dir: Optional[str],
                     manual_dir: Optional[str]):
  """The spec's tfds builder, its data prepared offline if need be.

  tfds extracts manual files to <download_dir>/extracted/GZIP.<file name>
  and reuses what it finds there. MNIST and Fashion-MNIST share the file
  names, so with tfds's one download_dir per data_dir the second dataset
  prepared would be built from the first one's images: each dataset gets its
  own. tfds raises many unrelated types when it cannot prepare; they all
  become one DataError naming the flag to look at.
  """
  builder = check_available(spec, data_dir, manual_dir)
  if builder.is_prepared():
    return builder
  root = data_dir or tfds.core.constants.DATA_DIR
  tfds.disable_progress_bar()
  try:
    builder.download_and_prepare(
        download_dir=os.path.join(root, 'downloads', spec.tfds_name),
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'could not prepare {spec.tfds_name} from --manual_dir='
                    f'{manual_dir}: {type(e).__name__}: {e}') from e
  return builder


def _read_tfds(spec: DatasetSpec, split: str, builder, root: str,
               max_examples: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
  """(uint8 images, int32 labels): in memory, or memory-mapped from a cache
  next to the tfds data when the split is large (module doc)."""
  try:
    ds = builder.as_dataset(
        split=split if not max_examples else f'{split}[:{max_examples}]',
        shuffle_files=False)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'could not load {spec.name}/{split} (--data_dir='
                    f'{root}): {type(e).__name__}: {e}') from e
  if max_examples:  # tfds.testing.mock_data ignores slices.
    ds = ds.take(max_examples)
  pairs = _image_label_pairs(spec, builder.info.features, ds)
  if _expected_examples(builder, split, max_examples) * np.prod(
      spec.image_shape) < MEMMAP_MIN_BYTES:
    return _read_into_memory(spec, split, pairs)
  prefix = os.path.join(root, 'dpgan_cache', f'{spec.key}-{split}-'
                        f'{max_examples or "all"}-{builder.version}')
  first = next(pairs.take(1).as_numpy_iterator(), (None,))[0]
  if first is None:
    raise DataError(f'{spec.name}/{split} is empty.')
  return array_cache.load_or_build(
      prefix, lambda: pairs.batch(_READ_BATCH).as_numpy_iterator(),
      spec.image_shape, first)


def _expected_examples(builder, split: str,
                       max_examples: Optional[int]) -> int:
  """The split's size from tfds metadata (0 where tfds has none)."""
  try:
    n = builder.info.splits[split].num_examples
  except KeyError:
    n = 0
  return min(n, max_examples) if max_examples else n


def _image_label_pairs(spec: DatasetSpec, features,
                       ds: tf.data.Dataset) -> tf.data.Dataset:
  """(uint8 image at the spec's shape, int32 class) pairs; CelebA's class is
  its attribute."""
  source = tuple(features[spec.image_key].shape)

  def pair(example):
    label = (example['attributes'][spec.attribute] if spec.attribute else
             example[spec.label_key])
    return (to_spec_shape(example[spec.image_key], source, spec),
            tf.cast(label, tf.int32))

  return ds.map(pair, num_parallel_calls=tf.data.AUTOTUNE)


def to_spec_shape(image: tf.Tensor, source: Tuple, spec: DatasetSpec):
  """uint8 [h, w, c] -> uint8 spec.image_shape: colour converted, the
  centred square (spec.crop, or the largest) resized."""
  if source == spec.image_shape:
    return image
  height, width, channels = spec.image_shape
  if source[-1] is not None and source[-1] != channels:
    image = (tf.image.grayscale_to_rgb(image) if channels == 3 else
             tf.image.rgb_to_grayscale(image))
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  side = spec.crop or tf.minimum(h, w)
  image = tf.image.crop_to_bounding_box(image, (h - side) // 2,
                                        (w - side) // 2, side, side)
  image = tf.image.resize(image, (height, width), antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


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
  if spec.first_image_md5 is None or spec.variant:
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


def split_size(spec: DatasetSpec, split: str,
               data_dir: Optional[str] = None) -> int:
  """Examples in a split, without reading them (tfds metadata, or the
  folder's listing).

  tfds refuses a slice past the end of a split with a message about slices;
  callers check ranges against this first to name the flag instead.
  """
  if spec.folder is not None:
    return len(image_folder.split_files(spec.folder, split))
  builder = _builder(spec.tfds_name, data_dir)
  return builder.info.splits[split].num_examples


def to_model_range(images) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [-1, 1], the generator's tanh range."""
  return tf.cast(images, tf.float32) / 127.5 - 1.0


def to_unit_range(images) -> tf.Tensor:
  """float32 [-1, 1] -> float32 [0, 1], the exported image range."""
  return tf.clip_by_value((images + 1.0) / 2.0, 0.0, 1.0)
