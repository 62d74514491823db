"""A large split as a memory-mapped uint8 file, built once and checked.

Poisson sampling gathers a random subset of all N examples at every critic
step (batching.py), so the whole split must be at hand; CelebA at 128x128 is
~8 GB of uint8. It is streamed once, batch by batch, into
`<prefix>.images.u8` (raw [N, H, W, C] uint8) and `<prefix>.labels.npy`,
then `<prefix>.json` records the shape and the SHA-256 of both files; the
JSON is written last, so a build that was interrupted is never taken for a
finished one. Later runs map the file read-only: the kernel pages in what a
batch reads, and can drop it again, so resident memory stays bounded
whatever N is (docs/datasets.md gives the measured peak).

A cache is used only if the sizes, the hashes and the first image all match
(the first image against the source's, which tells a cache built from other
data, such as tfds's mock data, from the prepared dataset); otherwise it is
rebuilt, never trusted.
"""

import hashlib
import json
import os
from typing import Callable, Iterable, Tuple

from absl import logging
import numpy as np

from dpgan_tf import files

_CHUNK = 16 << 20


def _sha256(path: str) -> str:
  """Read in chunks: hashing maps nothing, so it adds no resident memory."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _paths(prefix: str) -> Tuple[str, str, str]:
  return prefix + '.images.u8', prefix + '.labels.npy', prefix + '.json'


def _build(prefix: str, batches: Iterable[Tuple[np.ndarray, np.ndarray]],
           image_shape: Tuple[int, int, int]) -> None:
  """Streams (images, labels) batches into the cache files (module doc)."""
  images_path, labels_path, record_path = _paths(prefix)
  os.makedirs(os.path.dirname(prefix), exist_ok=True)
  labels = []

  def write_images(staging):
    with open(staging, 'wb') as f:
      for x, y in batches:
        if x.shape[1:] != tuple(image_shape):
          raise ValueError(f'images of shape {x.shape[1:]}, expected '
                           f'{image_shape}')
        f.write(np.ascontiguousarray(x, np.uint8).tobytes())
        labels.append(np.asarray(y, np.int32))
    if not labels:
      raise ValueError('the split is empty')

  files.replace_atomically(images_path, write_images)
  files.replace_atomically(labels_path,
                           lambda p: np.save(p, np.concatenate(labels)))
  files.write_json_atomically(record_path, {
      'num_examples': int(sum(len(y) for y in labels)),
      'image_shape': list(image_shape),
      'images_sha256': _sha256(images_path),
      'labels_sha256': _sha256(labels_path)})


def _open(prefix: str, image_shape: Tuple[int, int, int],
          first_image: np.ndarray):
  """(images memmap, labels), or None if the cache is missing or does not
  match (module doc)."""
  images_path, labels_path, record_path = _paths(prefix)
  try:
    with open(record_path) as f:
      record = json.load(f)
    n = record['num_examples']
    if (record['image_shape'] != list(image_shape) or
        os.path.getsize(images_path) != n * int(np.prod(image_shape)) or
        _sha256(images_path) != record['images_sha256'] or
        _sha256(labels_path) != record['labels_sha256']):
      return None
    images = np.memmap(images_path, np.uint8, 'r', shape=(n, *image_shape))
    labels = np.load(labels_path)
  except (OSError, ValueError, KeyError):
    return None
  if len(labels) != n or not np.array_equal(images[0], first_image):
    return None
  return images, labels


def load_or_build(prefix: str,
                  batches: Callable[[], Iterable[Tuple[np.ndarray,
                                                       np.ndarray]]],
                  image_shape: Tuple[int, int, int],
                  first_image: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """(uint8 images [N, H, W, C] memory-mapped read-only, int32 labels [N]).

  Args:
    prefix: the cache files' path without their suffixes.
    batches: a fresh iterator of the source's (images, labels) batches.
    image_shape: (H, W, C).
    first_image: the source's first image (module doc).
  """
  opened = _open(prefix, image_shape, first_image)
  if opened is None:
    logging.info('Caching %s for random access (once) ...', prefix)
    _build(prefix, batches(), image_shape)
    opened = _open(prefix, image_shape, first_image)
    if opened is None:
      raise ValueError(f'{prefix}: the cache just built does not read back; '
                       'is the disk full or the source non-deterministic?')
  return opened
