"""Writing outputs without losing any: a directory that cannot hold them
fails before any work is done, and a file is written beside its place and
renamed, so a crash never leaves a truncated one."""

import json
import os
import tempfile
from typing import BinaryIO, Callable


class OutputDirError(ValueError):
  """An output directory cannot be written; names the flag."""


def check_writable_dir(path: str, flag: str) -> None:
  """Fails early, naming the flag, if `path` cannot hold our outputs.

  Probes by creating a file in `path` (or its nearest existing parent) rather
  than trusting permission bits, which root ignores.
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise OutputDirError(f'{flag}={path} is a file, not a directory.')
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise OutputDirError(
        f'{flag}={path} is not writable ({e.strerror}).') from e


def staging_path(path: str) -> str:
  """Where `path` is written before it is renamed into place (same
  directory, so the rename is atomic; the extension kept for writers that
  read it)."""
  root, extension = os.path.splitext(path)
  return f'{root}.tmp-{os.getpid()}{extension}'


def replace_atomically(path: str, write: Callable[[str], None]) -> None:
  """write(staging path), then renames it to `path`; the staging file is
  removed if writing fails."""
  staging = staging_path(path)
  try:
    write(staging)
    os.replace(staging, path)
  finally:
    if os.path.exists(staging):
      os.remove(staging)


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
  """write(binary file) to `path`, atomically."""

  def to_file(staging):
    with open(staging, 'wb') as f:
      write(f)

  replace_atomically(path, to_file)


def write_json_atomically(path: str, payload: dict) -> None:
  write_atomically(path, lambda f: f.write(
      json.dumps(payload, indent=2, sort_keys=True).encode()))
