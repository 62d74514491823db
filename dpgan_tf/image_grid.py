"""Sample grids: a row per class, for samples.png, TensorBoard and eval.py.

Every grid is drawn from the generator alone (labels and noise from a fixed
seed), so it carries the model's guarantee. The PNG files name each row's
class in a margin, so a grid can be read without the dataset's label list.
"""

from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
import tensorflow as tf

from dpgan_tf import data as data_lib
from dpgan_tf import files

# Pixels between a row's class name and the margin's edges.
_PAD = 4


def grid_labels(num_classes: int, per_class: int) -> np.ndarray:
  """The labels of a grid, row by row."""
  return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)


def tile(images: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
  """Images [0, 1] in grid_labels order -> one uint8 image [H, W, C]."""
  images = (images * 255).round().astype(np.uint8)
  _, h, w, c = images.shape
  grid = images.reshape(num_classes, per_class, h, w, c)
  return grid.transpose(0, 2, 1, 3, 4).reshape(num_classes * h, per_class * w,
                                               c)


def from_generator(generator, num_classes: int, latent_dim: int,
                   per_class: int, seed: int = 0) -> np.ndarray:
  """A grid from a Keras generator, noise keyed by `seed`."""
  labels = grid_labels(num_classes, per_class)
  noise = tf.random.stateless_normal([len(labels), latent_dim], [seed, 0])
  images = data_lib.to_unit_range(generator([noise, labels], training=False))
  return tile(images.numpy(), num_classes, per_class)


def from_export(module, num_classes: int, per_class: int,
                seed: int) -> np.ndarray:
  """A grid from an export's `generate` signature: the samples eval.py
  measures (with the export's candidate selection)."""
  labels = grid_labels(num_classes, per_class)
  images = module.signatures['generate'](
      labels=tf.constant(labels), seed=tf.constant(seed, tf.int64))['images']
  return tile(images.numpy(), num_classes, per_class)


def labelled(grid: np.ndarray, class_names: Sequence[str]) -> Image.Image:
  """The grid with each row's class name in a margin on its left."""
  image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  font = ImageFont.load_default()
  row_height = grid.shape[0] // len(class_names)
  widths = [font.getbbox(name)[2] for name in class_names]
  margin = max(widths) + 2 * _PAD
  page = Image.new(image.mode, (margin + image.width, image.height))
  page.paste(image, (margin, 0))
  draw = ImageDraw.Draw(page)
  white = 255 if image.mode == 'L' else (255, 255, 255)
  for row, name in enumerate(class_names):
    top, bottom = font.getbbox(name)[1::2]
    y = row * row_height + (row_height - (bottom - top)) // 2 - top
    draw.text((_PAD, y), name, fill=white, font=font)
  return page


def write_png(path: str, grid: np.ndarray,
              class_names: Sequence[str]) -> None:
  """The labelled grid as a PNG file, written atomically."""
  page = labelled(grid, class_names)
  files.write_atomically(path, lambda f: page.save(f, format='PNG'))
