"""Keras callbacks: privacy reporting, divergence guard, checkpoints, TensorBoard,
profiling.

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

from dpgan_tf import image_grid


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
      'checkpoint is kept and its ledger counts only its own steps. A resume '
      'must compute what the run computed: to try a lower --critic_lr, '
      '--generator_lr or another --loss, start a new run in a new '
      '--model_dir.')


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


class TensorBoardMonitor(tf.keras.callbacks.Callback):
  """Scalars every step and a per-class sample grid every `sample_every`.

  Tags: `privacy/epsilon`, `loss/*`, `speed/examples_per_sec`,
  `samples/per_class`, and `nonprivate/*` for diagnostics that read real
  data outside the guarantee.

  Speed is the expected examples per second over each `log_every` steps: a
  step's own time follows its realised Poisson batch size (the ghost
  engine's shapes do), which is private. Wall-clock time is outside the
  guarantee all the same; the average only keeps it from naming one batch.
  """

  def __init__(self, log_dir, num_classes, latent_dim, examples_per_step,
               sample_every, log_every):
    super().__init__()
    self.writer = tf.summary.create_file_writer(log_dir)
    self.num_classes = num_classes
    self.latent_dim = latent_dim
    self.examples_per_step = examples_per_step
    self.sample_every = sample_every
    self.log_every = log_every
    self._interval_start = None
    self._interval_steps = 0

  def _start_interval(self):
    self._interval_start = time.perf_counter()
    self._interval_steps = 0

  def on_train_begin(self, logs=None):
    self._start_interval()

  def on_train_batch_end(self, batch, logs=None):
    step = int(self.model.generator_steps.numpy())
    self._interval_steps += 1
    with self.writer.as_default(step=step):
      for key, value in logs.items():
        if key.startswith('nonprivate_'):
          tag = 'nonprivate/' + key[len('nonprivate_'):]
        elif key == 'epsilon':
          tag = 'privacy/epsilon'
        else:
          tag = 'loss/' + key
        tf.summary.scalar(tag, value)
      if step % self.log_every == 0:
        self._write_speed()
      if step % self.sample_every == 0:
        self.write_samples(step)

  def _write_speed(self):
    seconds = time.perf_counter() - self._interval_start
    tf.summary.scalar('speed/examples_per_sec',
                      self.examples_per_step * self._interval_steps /
                      max(seconds, 1e-9))
    self._start_interval()

  def write_samples(self, step):
    grid = image_grid.from_generator(self.model.sampling_generator,
                                     self.num_classes, self.latent_dim,
                                     per_class=8)
    with self.writer.as_default(step=step):
      tf.summary.image('samples/per_class', grid[None], max_outputs=1)

  def on_train_end(self, logs=None):
    self.write_samples(int(self.model.generator_steps.numpy()))
    self.writer.flush()


class ProfileSteps(tf.keras.callbacks.Callback):
  """Traces generator steps first..last (both included, and no further than
  the run's last step) with TensorFlow's profiler into `log_dir`,
  TensorBoard's Profile tab; one trace, also across the Keras epochs that
  training.fit runs one `fit` each. Op timings follow each step's realised
  Poisson batch size, which is private, so `log_dir` is under nonprivate/
  and the trace is off unless asked for. Last among the callbacks, so that
  every traced step includes the others' work (checkpoints, summaries)."""

  def __init__(self, log_dir, first, last, last_step_of_run):
    super().__init__()
    self.log_dir = log_dir
    self.first, self.last = first, min(last, last_step_of_run)
    self._tracing = False

  def on_train_batch_begin(self, batch, logs=None):
    step = int(self.model.generator_steps.numpy()) + 1
    if not self._tracing and self.first <= step <= self.last:
      tf.profiler.experimental.start(self.log_dir)
      self._tracing = True

  def on_train_batch_end(self, batch, logs=None):
    if self._tracing and int(self.model.generator_steps.numpy()) >= self.last:
      tf.profiler.experimental.stop()
      self._tracing = False
      logging.info('Profile of generator steps %d-%d written to %s',
                   self.first, self.last, self.log_dir)
