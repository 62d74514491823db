"""The user's own labelled images: `--dataset=folder:DIR`.

DIR holds one subfolder of PNG or JPEG files per class, the layout Keras's
`image_dataset_from_directory` reads; the classes are the subfolders' names,
sorted. Every file's header is checked before anything is trained, so bad
input fails at once, naming the file or folder: a file that is not a PNG or
JPEG image, a single class, an empty class, no images at all, or images with
different channel counts (unless --image_channels says what to convert them
to). A file that cannot be decoded fails when it is read, also by name.

A folder comes without a test split. One file in HELD_OUT_EVERY of each class,
picked by a hash of its path inside DIR, is held out as 'test' (adding files
never moves others between the splits); the rest is 'train', ordered by the
same hash, so that "the first K" (--max_train_examples) is a stable random
subset of every class rather than the first classes.
"""

import hashlib
import os
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

PREFIX = 'folder:'
HELD_OUT_EVERY = 10
_FORMATS = ('PNG', 'JPEG')
# PIL modes read as one channel; the others (RGB, RGBA, P, CMYK, ...) as
# three. Alpha is dropped.
_GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'F')


class FolderError(ValueError):
  """The folder cannot be used as a dataset; names the file or folder."""


def _hash(relative_path: str) -> str:
  return hashlib.md5(relative_path.encode()).hexdigest()


def _channels(path: str) -> int:
  """The image's channel count, from its header; refuses other files."""
  try:
    with Image.open(path) as image:
      image_format, mode = image.format, image.mode
  except (OSError, ValueError) as e:
    raise FolderError(f'{path} is not a readable PNG or JPEG image '
                      f'({type(e).__name__}: {e}).') from e
  if image_format not in _FORMATS:
    raise FolderError(f'{path} is a {image_format} image; use PNG or JPEG.')
  return 1 if mode in _GRAY_MODES else 3


def class_files(directory: str) -> List[Tuple[str, List[str]]]:
  """[(class name, its files relative to directory)], classes sorted."""
  if not os.path.isdir(directory):
    raise FolderError(f'--dataset={PREFIX}{directory}: {directory} is not a '
                      'directory.')
  classes = []
  for name in sorted(os.listdir(directory)):
    folder = os.path.join(directory, name)
    if name.startswith('.') or not os.path.isdir(folder):
      continue
    files = sorted(f for f in os.listdir(folder) if not f.startswith('.') and
                   os.path.isfile(os.path.join(folder, f)))
    classes.append((name, [os.path.join(name, f) for f in files]))
  if not any(files for _, files in classes):
    raise FolderError(f'--dataset={PREFIX}{directory}: {directory} holds no '
                      'images (expected one subfolder of PNG or JPEG files '
                      'per class).')
  for name, files in classes:
    if not files:
      raise FolderError(f'{os.path.join(directory, name)} is an empty class '
                        'folder: add its images or remove it.')
  if len(classes) < 2:
    raise FolderError(f'--dataset={PREFIX}{directory}: only one class '
                      f'({classes[0][0]}); a conditional GAN needs at least '
                      'two class subfolders.')
  return classes


def describe(directory: str,
             channels: Optional[int]) -> Tuple[Tuple[str, ...], int]:
  """(class names, channels): every file's header checked (module doc).

  `channels` None: the images' own count, which must be the same for all.
  """
  classes = class_files(directory)
  seen = {}
  for _, files in classes:
    for relative in files:
      path = os.path.join(directory, relative)
      seen.setdefault(_channels(path), path)
  if channels is None and len(seen) > 1:
    (c1, p1), (c2, p2) = sorted(seen.items())[:2]
    raise FolderError(f'--dataset={PREFIX}{directory}: images have '
                      f'different channel counts ({p1} has {c1}, {p2} has '
                      f'{c2}); give --image_channels=1 or 3 to convert them '
                      'all.')
  return tuple(name for name, _ in classes), channels or next(iter(seen))


def split_files(directory: str, split: str) -> List[Tuple[str, int]]:
  """[(relative path, class index)] of 'train' or 'test' (module doc)."""
  if split not in ('train', 'test'):
    raise FolderError(f'{PREFIX}{directory} has the splits train and test, '
                      f'not {split!r}.')
  chosen = []
  for label, (name, files) in enumerate(class_files(directory)):
    mine = [f for f in files
            if (int(_hash(f)[:8], 16) % HELD_OUT_EVERY == 0) == (
                split == 'test')]
    if split == 'train' and not mine:
      raise FolderError(f'{os.path.join(directory, name)}: every image of '
                        'this class fell in the held-out tenth; add images.')
    chosen.extend((f, label) for f in mine)
  return sorted(chosen, key=lambda item: _hash(item[0]))


def read_image(path: str, image_shape: Tuple[int, int, int]) -> np.ndarray:
  """uint8 [H, W, C]: the largest centred square, resized to H x W."""
  height, width, channels = image_shape
  try:
    with Image.open(path) as image:
      image = image.convert('L' if channels == 1 else 'RGB')
  except (OSError, ValueError) as e:
    raise FolderError(f'{path} could not be decoded ({type(e).__name__}: '
                      f'{e}).') from e
  side = min(image.size)
  left, top = (image.width - side) // 2, (image.height - side) // 2
  image = image.crop((left, top, left + side, top + side))
  if image.size != (width, height):
    image = image.resize((width, height), Image.Resampling.BILINEAR)
  return np.asarray(image, np.uint8).reshape(image_shape)


def read_split(directory: str, split: str, image_shape: Tuple[int, int, int],
               max_examples: Optional[int] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
  """(uint8 images [N, H, W, C], int32 labels [N]) of a split."""
  chosen = split_files(directory, split)[:max_examples]
  if not chosen:
    raise FolderError(f'{PREFIX}{directory}: the {split} split is empty (one '
                      f'image in {HELD_OUT_EVERY} is held out for test); add '
                      'images.')
  images = np.stack([read_image(os.path.join(directory, f), image_shape)
                     for f, _ in chosen])
  return images, np.array([label for _, label in chosen], np.int32)
