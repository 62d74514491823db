"""Which real examples each critic step reads.

Poisson sampling (the default) is what the accountant assumes: at every
critic step each training example is included independently with probability
q = batch_size / N, so batch sizes vary around batch_size. `shuffle` is the
common fixed-size approximation (a fresh permutation per epoch, cut into
batches); reports say which was used.

Indices come from an RNG keyed by (seed, critic step), so a
resumed run draws exactly the batches an uninterrupted one would, and no
sampler state needs saving. The seed must stay secret for the guarantee (the
subsampling is part of the mechanism): when the user gives none, the run
draws one from the OS and keeps it in the checkpoint.
"""

from typing import Tuple

import numpy as np
import tensorflow as tf

from dpgan_tf import data as data_lib


def _rng(seed: int, stream: int, counter: int) -> np.random.Generator:
  # SeedSequence hashes the whole key: streams for different counters are
  # independent (Philox counters of one key would overlap).
  return np.random.default_rng([seed, stream, counter])


_POISSON_STREAM = 1
_SHUFFLE_STREAM = 2


class CriticBatchSampler:
  """Draws the real batch of every critic step."""

  def __init__(self, train: data_lib.LabeledImages, batch_size: int,
               sampling: str, seed: int):
    if sampling not in ('poisson', 'shuffle'):
      raise ValueError(f'--sampling={sampling!r}: choose poisson or shuffle.')
    self.train = train
    self.batch_size = batch_size
    self.sampling = sampling
    self.seed = seed
    self.dataset_size = len(train)

  @property
  def sampling_probability(self) -> float:
    return self.batch_size / self.dataset_size

  @property
  def steps_per_epoch(self) -> int:
    """Critic steps that read the data set once (in expectation)."""
    return self.dataset_size // self.batch_size

  def indices(self, critic_step: int) -> np.ndarray:
    if self.sampling == 'poisson':
      rng = _rng(self.seed, _POISSON_STREAM, critic_step)
      return np.flatnonzero(
          rng.random(self.dataset_size) < self.sampling_probability)
    epoch, position = divmod(critic_step, self.steps_per_epoch)
    order = _rng(self.seed, _SHUFFLE_STREAM, epoch).permutation(
        self.dataset_size)
    start = position * self.batch_size
    return np.sort(order[start:start + self.batch_size])

  def batch(self, critic_step: int) -> Tuple[np.ndarray, np.ndarray]:
    idx = self.indices(critic_step)
    return self.train.images[idx], self.train.labels[idx]

  def dataset(self, first_generator_step: int, last_generator_step: int,
              n_critic: int) -> tf.data.Dataset:
    """Elements for generator steps [first, last): n_critic real batches each.

    Critic step c of generator step g is g * n_critic + c, matching the
    ledger's count.
    """

    def elements():
      for g in range(first_generator_step, last_generator_step):
        yield tuple(self.batch(g * n_critic + c) for c in range(n_critic))

    shape = self.train.spec.image_shape
    batch_spec = (tf.TensorSpec((None,) + shape, tf.uint8),
                  tf.TensorSpec((None,), tf.int32))
    ds = tf.data.Dataset.from_generator(
        elements, output_signature=(batch_spec,) * n_critic)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return ds.with_options(options).prefetch(2)
