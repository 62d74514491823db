"""A private warm start: one Gaussian release of the private data's class-wise
feature sums, then the generator pre-trained on it (DP-MERF, Harder et al.,
2021). DP-SGD's critic then refines the generator with the rest of the budget.

The release. Each example x of class y adds one vector to row y of a
[num_classes, 2D + 1] table: its D random Fourier features
phi(x) = [cos(Wx), sin(Wx)] / sqrt(D) (W ~ N(0, I / l^2), the Gaussian kernel
of length scale l on [0, 1] pixels), scaled by sqrt(1 - b^2), and b in the
last column, which counts it. That vector has unit L2 norm; it is normalised
anyway, so the bound holds whatever the rounding. The statistic is the
table's sum over the training set: adding or removing one example changes
one row by one unit vector, so its L2 sensitivity is exactly 1, and the
Gaussian mechanism releases it once with noise N(0, sigma^2) per entry.
sigma is calibrated to the warm start's share of the budget and the release
is composed with the critic's updates (privacy.py). The frequencies W are
public randomness, drawn from the run seed, not from the data.

Class sizes are private too: the count column gives noisy ones from the same
release, so the class means (sums over counts) cost nothing more. b trades
the counts' precision for the features': with b = 0.1 a count's noise is
10 sigma examples while the features keep 99.5% of their scale, and the
features' noise (2D entries) dominates the means' error either way.

Pre-training. The generator is trained to bring the mean features of its
samples of each class to the released class means (a maximum mean
discrepancy under the random-feature kernel). It reads only the release:
post-processing, and its loss (warm_start/loss) is logged by default.

Resumption. The release's noise is keyed by the run seed. The release is
saved in the checkpoint (WarmStart.release) with ledger.warm_start_releases
= 1 before anything is computed from it, and a resumed run restores it and
never draws again. Pre-training steps are counted in WarmStart.steps,
checkpointed every --checkpoint_every steps under their own name
(warm_start-<step>), and their randomness is keyed by the step, so a resumed
run continues with what the uninterrupted one would have drawn.
"""

import math
import os

from absl import logging
import numpy as np
import tensorflow as tf

from dpgan_tf import callbacks as callbacks_lib
from dpgan_tf import data as data_lib
from dpgan_tf import gan
from dpgan_tf import privacy

# b, the share of an example's unit vector that counts it (see module doc).
COUNT_WEIGHT = 0.1
CHECKPOINT_NAME = 'warm_start'


def frequencies(seed, image_dim: int, num_features: int,
                length_scale: float) -> tf.Tensor:
  """W [image_dim, D], public randomness keyed by the run seed."""
  return tf.random.stateless_normal(
      [image_dim, num_features],
      gan.rng_key(seed, gan.WARM_START_FREQUENCIES, 0)) / length_scale


def features(images, freqs) -> tf.Tensor:
  """phi(x) [n, 2D] of images [n, H, W, C] in [0, 1]: unit norm each."""
  x = tf.reshape(images, [tf.shape(images)[0], -1])
  projections = tf.matmul(tf.cast(x, freqs.dtype), freqs)
  return tf.concat([tf.cos(projections), tf.sin(projections)], -1) / math.sqrt(
      freqs.shape[1])


def example_vectors(images, freqs) -> tf.Tensor:
  """What each example adds to its class row: [sqrt(1-b^2) phi(x), b],
  normalised to unit L2 norm."""
  phi = features(images, freqs)
  counts = tf.fill([tf.shape(phi)[0], 1], tf.constant(COUNT_WEIGHT,
                                                      phi.dtype))
  v = tf.concat([math.sqrt(1.0 - COUNT_WEIGHT**2) * phi, counts], -1)
  return v / tf.norm(v, axis=-1, keepdims=True)


def class_sums(images: np.ndarray, labels: np.ndarray, num_classes: int,
               freqs, chunk: int = 2048) -> tf.Tensor:
  """The released statistic (before noise): the sum of every example's
  vector in its class row, [num_classes, 2D + 1]; L2 sensitivity 1.

  In float64 throughout: a batched matmul's rounding depends on the batch's
  shape, so in float32 removing one example would move the other examples'
  features by ~1e-5 at short length scales; in float64 by ~1e-13.
  """
  freqs = tf.cast(freqs, tf.float64)
  total = tf.zeros([num_classes, 2 * freqs.shape[1] + 1], tf.float64)
  for start in range(0, len(labels), chunk):
    x = tf.cast(images[start:start + chunk], tf.float64) / 255.0
    total += tf.math.unsorted_segment_sum(
        example_vectors(x, freqs), labels[start:start + chunk], num_classes)
  return total


def release(statistic: tf.Tensor, noise_multiplier: float, seed) -> tf.Tensor:
  """The Gaussian mechanism on a statistic of sensitivity 1: the run's one
  draw of the WARM_START_RELEASE stream."""
  noise = tf.random.stateless_normal(
      tf.shape(statistic), gan.rng_key(seed, gan.WARM_START_RELEASE, 0),
      dtype=tf.float64)
  return statistic + noise_multiplier * noise


def class_means(released: tf.Tensor) -> tf.Tensor:
  """Each class's mean phi(x), estimated from the release: its noisy sums
  over its noisy count (at least one example)."""
  counts = tf.maximum(released[:, -1] / COUNT_WEIGHT, 1.0)
  sums = released[:, :-1] / math.sqrt(1.0 - COUNT_WEIGHT**2)
  return tf.cast(sums / counts[:, None], tf.float32)


class WarmStart(tf.Module):
  """The warm start's checkpointed state: the release, the pre-training
  steps taken and their optimizer's slots."""

  def __init__(self, num_classes: int, num_features: int,
               learning_rate: float):
    super().__init__(name='warm_start')
    self.release = tf.Variable(
        tf.zeros([num_classes, 2 * num_features + 1], tf.float64),
        trainable=False)
    self.steps = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.optimizer = tf.keras.optimizers.legacy.Adam(learning_rate)


def make_pretrain_step(generator, optimizer, freqs, targets, seed,
                       batch_size: int, latent_dim: int):
  """One pre-training update, a function of its step number: the same
  number of samples of every class, noise keyed by the step."""
  num_classes = targets.shape[0]
  labels = tf.repeat(tf.range(num_classes), max(1, batch_size // num_classes))

  @tf.function
  def step(counter):
    noise = tf.random.stateless_normal(
        [tf.shape(labels)[0], latent_dim],
        gan.rng_key(seed, gan.WARM_START_NOISE, counter))
    with tf.GradientTape() as tape:
      images = data_lib.to_unit_range(generator([noise, labels],
                                                training=True))
      means = tf.math.unsorted_segment_mean(features(images, freqs), labels,
                                            num_classes)
      loss = tf.reduce_sum(tf.square(means - targets))
    grads = tape.gradient(loss, generator.trainable_variables)
    optimizer.apply_gradients(zip(grads, generator.trainable_variables))
    return loss

  return step


def draw_release(state: WarmStart, ledger: privacy.PrivacyLedger, train_split,
                 freqs, seed, manager: tf.train.CheckpointManager) -> None:
  """Draws the release and checkpoints it before anything reads it."""
  statistic = class_sums(train_split.images, train_split.labels,
                         train_split.spec.num_classes, freqs)
  state.release.assign(release(statistic, float(
      ledger.warm_start_noise_multiplier.numpy()), seed))
  ledger.warm_start_releases.assign(1)
  manager.save(checkpoint_number=0)


def run(c, state: WarmStart, ledger: privacy.PrivacyLedger, generator,
        ema_generator, train_split, seed: int,
        checkpoint: tf.train.Checkpoint) -> None:
  """The warm-start phase (c: a TrainConfig), from where the checkpoint left
  it: the release if not drawn yet, then pre-training to
  --warm_start_steps, checkpointed along the way; the generator's moving
  average (if kept) starts from the pre-trained generator."""
  freqs = frequencies(seed, int(np.prod(train_split.spec.image_shape)),
                      c.warm_start_features, c.warm_start_length_scale)
  manager = tf.train.CheckpointManager(checkpoint, c.model_dir,
                                       c.keep_checkpoints,
                                       checkpoint_name=CHECKPOINT_NAME)
  if not int(ledger.warm_start_releases.numpy()):
    draw_release(state, ledger, train_split, freqs, seed, manager)
  epsilon = privacy.warm_start_epsilon(
      float(ledger.warm_start_noise_multiplier.numpy()),
      float(ledger.delta.numpy()))
  logging.info('Warm start: class-wise random-feature sums released, '
               'sigma=%.4g, epsilon=%.4g alone; pre-training the generator '
               'from step %d of %d.', ledger.warm_start_noise_multiplier.numpy(),
               epsilon, state.steps.numpy(), c.warm_start_steps)
  writer = tf.summary.create_file_writer(os.path.join(c.model_dir, 'train'))
  with writer.as_default(step=0):
    tf.summary.scalar('privacy/warm_start_epsilon', epsilon)
  step_fn = make_pretrain_step(generator, state.optimizer, freqs,
                               class_means(state.release), seed, c.batch_size,
                               c.latent_dim)
  for step in range(int(state.steps.numpy()), c.warm_start_steps):
    loss = float(step_fn(tf.constant(step, tf.int64)))
    if not math.isfinite(loss):
      raise callbacks_lib.TrainingDiverged(
          f'the warm start\'s loss became non-finite at its step {step}; the '
          'last good checkpoint is kept. Try a lower --warm_start_lr.')
    state.steps.assign(step + 1)
    with writer.as_default(step=step + 1):
      tf.summary.scalar('warm_start/loss', loss)
    if (step + 1) % c.log_every == 0:
      logging.info('warm start step %d/%d loss=%.4g', step + 1,
                   c.warm_start_steps, loss)
    if step + 1 == c.warm_start_steps and ema_generator is not None:
      ema_generator.set_weights(generator.get_weights())
    if (step + 1) % c.checkpoint_every == 0 or step + 1 == c.warm_start_steps:
      manager.save(checkpoint_number=step + 1)
  writer.flush()


def metadata(c, ledger: privacy.PrivacyLedger):
  """The warm start's part of the export's metadata (None without one)."""
  if c.warm_start == 'none':
    return None
  d = ledger.as_dict()
  return {
      'method': c.warm_start,
      'mechanism': 'gaussian',
      'statistic': 'class-wise sums of random Fourier features, with counts',
      'l2_sensitivity': 1.0,
      'noise_multiplier': d['warm_start_noise_multiplier'],
      'epsilon_share': c.warm_start_epsilon_share,
      'epsilon': privacy.warm_start_epsilon(d['warm_start_noise_multiplier'],
                                            d['delta']),
      'released': bool(d['warm_start_releases']),
      'steps': c.warm_start_steps,
      'features': c.warm_start_features,
      'length_scale': c.warm_start_length_scale,
  }
