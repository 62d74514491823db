"""Sample grids: the tiling order and the labelled PNG."""

import numpy as np
from PIL import Image
import pytest

from dpgan_tf import image_grid


def test_rows_are_classes_in_label_order():
  classes, per_class = 3, 2
  labels = image_grid.grid_labels(classes, per_class)
  np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])
  # Image i is uniformly i / 5: its grid cell must hold exactly that value.
  images = np.stack([np.full((4, 5, 1), i / 5) for i in range(6)])
  grid = image_grid.tile(images, classes, per_class)
  assert grid.shape == (12, 10, 1) and grid.dtype == np.uint8
  for i in range(6):
    row, col = divmod(i, per_class)
    cell = grid[4 * row:4 * row + 4, 5 * col:5 * col + 5]
    assert np.all(cell == round(255 * i / 5))


@pytest.mark.parametrize('channels', [1, 3])
def test_png_names_each_row_in_a_margin(tmp_path, channels):
  names = ['T-shirt/top', 'Trouser', 'Ankle boot']
  grid = np.zeros((3 * 28, 4 * 28, channels), np.uint8)
  path = str(tmp_path / 'samples.png')
  image_grid.write_png(path, grid, names)
  page = np.asarray(Image.open(path))
  margin = page.shape[1] - grid.shape[1]
  assert page.shape[0] == grid.shape[0] and margin > 0
  # Each row's margin holds text; the grid itself is untouched.
  for row in range(3):
    assert page[28 * row:28 * row + 28, :margin].max() > 200
  assert not page[:, margin:].any()
  assert not list(tmp_path.glob('*.tmp-*'))
