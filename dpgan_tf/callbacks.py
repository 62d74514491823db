"""Keras callbacks: privacy reporting, divergence guard, checkpoints, TensorBoard.

They run after every `train_step` in this order: epsilon is added to the logs
first (so the progress bar and TensorBoard show it), a non-finite loss stops
training before anything is saved, then checkpoints and summaries.
"""

import math
import os
import time

from absl import logging
import numpy as np
import tensorflow as tf

from dpgan_tf import data as data_lib


class TrainingDiverged(RuntimeError):
  """A loss became NaN or Inf; the last good checkpoint is kept."""


class PrivacyMonitor(tf.keras.callbacks.Callback):
  """Adds `epsilon` (spent so far, from the ledger) to every step's logs."""

  def __init__(self, ledger, curve, target_epsilon=None, log_every=50,
               total_steps=None):
    super().__init__()
    self.ledger = ledger
    self.curve = curve
    self.target_epsilon = target_epsilon
    self.log_every = log_every
    self.total_steps = total_steps

  def on_train_batch_end(self, batch, logs=None):
    steps = int(self.ledger.critic_steps.numpy())
    epsilon = self.curve(steps)
    logs['epsilon'] = epsilon
    if self.target_epsilon is not None and epsilon > self.target_epsilon:
      # The step plan stops before this; reaching it is a bug, never a result.
      raise RuntimeError(f'privacy budget exceeded: epsilon={epsilon} > '
                         f'{self.target_epsilon} after {steps} critic steps.')
    generator_steps = int(self.model.generator_steps.numpy())
    if generator_steps % self.log_every == 0 or (
        generator_steps == self.total_steps):
      shown = ' '.join(f'{k}={v:.4g}' for k, v in sorted(logs.items()))
      logging.info('step %d/%s critic_steps=%d %s', generator_steps,
                   self.total_steps, steps, shown)


def _raise_diverged(model, what: str):
  raise TrainingDiverged(
      f'{what} became non-finite at generator step '
      f'{int(model.generator_steps.numpy())}. Training stopped; the last good '
      'checkpoint is kept and its ledger counts only its own steps. Try a '
      'lower --critic_lr/--generator_lr or --loss=hinge.')


class NonFiniteGuard(tf.keras.callbacks.Callback):
  """Stops training on a NaN/Inf loss, before the state is checkpointed."""

  def on_train_batch_end(self, batch, logs=None):
    bad = sorted(k for k, v in logs.items() if not math.isfinite(float(v)))
    if bad:
      _raise_diverged(self.model, ', '.join(bad))


class PeriodicCheckpoint(tf.keras.callbacks.Callback):
  """Saves every `every` generator steps and when training ends.

  The ledger is part of the checkpoint, so the saved step count always
  matches the saved weights.
  """

  def __init__(self, manager: tf.train.CheckpointManager, every: int):
    super().__init__()
    self.manager = manager
    self.every = every

  def _save(self):
    # A step can make the weights non-finite before any loss shows it.
    weights = self.model.generator.get_weights() + (
        self.model.critic.get_weights())
    if not all(np.isfinite(w).all() for w in weights):
      _raise_diverged(self.model, 'the model weights')
    step = int(self.model.generator_steps.numpy())
    latest = self.manager.latest_checkpoint
    # By name: the warm start's checkpoints (warm_start-<its step>) share
    # the directory.
    if latest is None or os.path.basename(latest) != f'ckpt-{step}':
      self.manager.save(checkpoint_number=step)

  def on_train_batch_end(self, batch, logs=None):
    if int(self.model.generator_steps.numpy()) % self.every == 0:
      self._save()

  def on_train_end(self, logs=None):
    self._save()


def sample_grid(generator, num_classes: int, latent_dim: int, per_class: int,
                seed: int = 0) -> np.ndarray:
  """One row per class, `per_class` columns, as one uint8 image [H, W, C]."""
  labels = grid_labels(num_classes, per_class)
  noise = tf.random.stateless_normal([len(labels), latent_dim], [seed, 0])
  images = data_lib.to_unit_range(generator([noise, labels], training=False))
  return tile_grid(images.numpy(), num_classes, per_class)


def grid_labels(num_classes: int, per_class: int) -> np.ndarray:
  """The labels of a sample grid, row by row."""
  return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)


def tile_grid(images: np.ndarray, num_classes: int,
              per_class: int) -> np.ndarray:
  """Images [0, 1] in grid_labels order -> one uint8 image [H, W, C]."""
  images = (images * 255).round().astype(np.uint8)
  n, h, w, c = images.shape
  grid = images.reshape(num_classes, per_class, h, w, c)
  return grid.transpose(0, 2, 1, 3, 4).reshape(num_classes * h, per_class * w,
                                               c)


def write_sample_png(generator, path: str, num_classes: int,
                     latent_dim: int) -> None:
  """Saves a per-class sample grid as PNG (generator output only)."""
  png = tf.io.encode_png(sample_grid(generator, num_classes, latent_dim,
                                     per_class=10))
  tf.io.write_file(path, png)


class TensorBoardMonitor(tf.keras.callbacks.Callback):
  """Scalars every step and a per-class sample grid every `sample_every`.

  Tags: `privacy/epsilon`, `loss/*`, `speed/examples_per_sec`,
  `samples/per_class`, and `nonprivate/*` for diagnostics that read real
  data outside the guarantee.
  """

  def __init__(self, log_dir, num_classes, latent_dim, examples_per_step,
               sample_every):
    super().__init__()
    self.writer = tf.summary.create_file_writer(log_dir)
    self.num_classes = num_classes
    self.latent_dim = latent_dim
    self.examples_per_step = examples_per_step
    self.sample_every = sample_every
    self._last = None

  def on_train_batch_begin(self, batch, logs=None):
    self._last = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    step = int(self.model.generator_steps.numpy())
    seconds = time.perf_counter() - self._last
    with self.writer.as_default(step=step):
      for key, value in logs.items():
        if key.startswith('nonprivate_'):
          tag = 'nonprivate/' + key[len('nonprivate_'):]
        elif key == 'epsilon':
          tag = 'privacy/epsilon'
        else:
          tag = 'loss/' + key
        tf.summary.scalar(tag, value)
      # Expected examples: the realised Poisson batch size is not private.
      tf.summary.scalar('speed/examples_per_sec',
                        self.examples_per_step / max(seconds, 1e-9))
      if step % self.sample_every == 0:
        self.write_samples(step)

  def write_samples(self, step):
    grid = sample_grid(self.model.sampling_generator, self.num_classes,
                       self.latent_dim, per_class=8)
    with self.writer.as_default(step=step):
      tf.summary.image('samples/per_class', grid[None], max_outputs=1)

  def on_train_end(self, logs=None):
    self.write_samples(int(self.model.generator_steps.numpy()))
    self.writer.flush()
