"""A --manual_dir for tfds.testing.mock_data runs.

The loader lets tfds prepare a dataset only when every official file is in
--manual_dir at its official size (it never downloads). Under mock_data the
preparation is a no-op, so sparse files of those names and sizes pass that
check without using any disk.
"""

import os

from dpgan_tf import data as data_lib


def placeholder_manual_dir(path, spec: data_lib.DatasetSpec) -> str:
  """Sparse stand-ins for the spec's official files in `path`."""
  os.makedirs(path, exist_ok=True)
  for name, (_, size) in data_lib.official_files(spec).items():
    with open(os.path.join(path, name), 'wb') as f:
      f.truncate(size)
  return str(path)
