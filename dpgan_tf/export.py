"""The generator as a TF Serving SavedModel that carries its privacy guarantee.

Layout: `<export_dir>/<version>/` with numeric versions (TF Serving serves
the highest). A version is written to a hidden temporary directory and renamed
into place, so a crash mid-export never leaves a half-written version for a
server to load, and an existing version is never overwritten.

The generator is exported: it is the released, post-processed output of
the private training. With `sample_candidates` M > 1 the critic is exported
too, and `generate` draws M candidates per requested image and returns the
one the critic scores highest for its label ("best of M", a per-image form of
discriminator rejection sampling, Azadi et al., 2019). That costs no privacy:
DP-SGD's guarantee covers every iterate of the critic, its last one
included, so scoring with it is post-processing. `serving_default` takes the
caller's noise and stays the plain generator.
"""

import json
import os
import re
import shutil
import tempfile
from typing import Optional

import tensorflow as tf

from dpgan_tf import data as data_lib

METADATA_FILE = 'dpgan.json'
_VERSION = re.compile(r'^\d+$')
_STAGING_PREFIX = '.incomplete-'


class ExportError(ValueError):
  """An export directory is missing or unusable; names the path."""


class GeneratorServingModule(tf.Module):
  """The exported object: two signatures over the generator (and critic)."""

  def __init__(self, generator: tf.keras.Model, latent_dim: int,
               metadata_path: str, critic: Optional[tf.keras.Model] = None,
               sample_candidates: int = 1):
    super().__init__(name='dpgan_generator')
    if sample_candidates > 1 and critic is None:
      raise ValueError(f'sample_candidates={sample_candidates} needs the '
                       'critic that scores the candidates.')
    self.generator = generator
    self.latent_dim = latent_dim
    self.sample_candidates = sample_candidates
    # Saved only when it selects samples.
    self.critic = critic if sample_candidates > 1 else None
    self.metadata = tf.saved_model.Asset(metadata_path)
    # Without autograph: it converts a function from its source file, read
    # when tracing, by line number. train.py traces these at the end of a
    # run, possibly hours after importing dpgan_tf; had the package been
    # edited or upgraded meanwhile, the export would compute whatever now
    # sits at those lines. Nothing here needs autograph (no Python control
    # flow on tensors).
    self.serve = tf.function(self._serve, autograph=False, input_signature=[
        tf.TensorSpec([None, latent_dim], tf.float32, name='noise'),
        tf.TensorSpec([None], tf.int32, name='labels')])
    self.generate = tf.function(self._generate, autograph=False,
                                input_signature=[
                                    tf.TensorSpec([None], tf.int32,
                                                  name='labels'),
                                    tf.TensorSpec([], tf.int64, name='seed')])

  def _serve(self, noise, labels):
    """noise [N, latent_dim], labels [N] -> images [N, H, W, C] in [0, 1]."""
    return {'images': data_lib.to_unit_range(
        self.generator([noise, labels], training=False))}

  def _generate(self, labels, seed):
    """labels [N], seed -> images; noise from a stateless RNG keyed by seed.

    Image i is the best of candidates [i*M, (i+1)*M) by critic score.
    """
    m = self.sample_candidates
    n = tf.shape(labels)[0]
    noise = tf.random.stateless_normal(
        [n * m, self.latent_dim], tf.stack([seed, tf.zeros([], tf.int64)]))
    if m == 1:
      return self._serve(noise, labels)
    candidate_labels = tf.repeat(labels, m)
    images = self.generator([noise, candidate_labels], training=False)
    scores = tf.reshape(self.critic([images, candidate_labels],
                                    training=False), [n, m])
    best = tf.argmax(scores, axis=1, output_type=tf.int32)
    images = tf.reshape(images, tf.concat([[n, m], tf.shape(images)[1:]], 0))
    return {'images': data_lib.to_unit_range(
        tf.gather(images, best, axis=1, batch_dims=1))}


def list_versions(export_dir: str):
  if not os.path.isdir(export_dir):
    return []
  return sorted(int(n) for n in os.listdir(export_dir) if _VERSION.match(n))


def export_generator(generator: tf.keras.Model, export_dir: str,
                     latent_dim: int, metadata: dict,
                     critic: Optional[tf.keras.Model] = None,
                     sample_candidates: int = 1) -> str:
  """Writes a new version under export_dir; returns its path.

  `generate` returns the best of `sample_candidates` by `critic` score (see
  module doc).
  """
  os.makedirs(export_dir, exist_ok=True)
  for name in os.listdir(export_dir):  # Left by an export that was killed.
    if name.startswith(_STAGING_PREFIX):
      shutil.rmtree(os.path.join(export_dir, name), ignore_errors=True)
  versions = list_versions(export_dir)
  version = (versions[-1] + 1) if versions else 1
  staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=export_dir)
  try:
    metadata_path = os.path.join(staging, METADATA_FILE)
    with open(metadata_path, 'w') as f:
      json.dump(metadata, f, indent=2, sort_keys=True)
    module = GeneratorServingModule(generator, latent_dim, metadata_path,
                                    critic, sample_candidates)
    model_path = os.path.join(staging, 'model')
    tf.saved_model.save(module, model_path, signatures={
        'serving_default': module.serve,
        'generate': module.generate,
    })
    final = os.path.join(export_dir, str(version))
    os.rename(model_path, final)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return final


def sample_candidates_of(metadata: dict) -> int:
  """The export's M; exports from before the option drew plain samples."""
  return metadata.get('sample_candidates', 1)


def resolve_version_dir(path: str) -> str:
  """A version directory, or its parent meaning the newest version."""
  if os.path.isfile(os.path.join(path, 'saved_model.pb')):
    return path
  versions = list_versions(path)
  if not versions:
    raise ExportError(f'--export_dir={path} holds no exported model (expected '
                      'saved_model.pb or numeric version directories).')
  return os.path.join(path, str(versions[-1]))


def read_metadata(version_dir: str) -> dict:
  path = os.path.join(version_dir, 'assets', METADATA_FILE)
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ExportError(f'{path} is missing or unreadable: {e}') from e


def latest_metadata(export_dir: str) -> Optional[dict]:
  """Metadata of the newest version, or None if there is none."""
  versions = list_versions(export_dir)
  if not versions:
    return None
  return read_metadata(os.path.join(export_dir, str(versions[-1])))
