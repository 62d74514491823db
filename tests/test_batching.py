"""The critic's batch sampler: Poisson statistics, shuffle coverage, seeds."""

import numpy as np
import pytest

from dpgan_tf import data
from dpgan_tf import batching


def _train(n):
  spec = data.DATASETS['mnist']
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones(
      (1,) + spec.image_shape, np.uint8)
  return data.LabeledImages(images, np.arange(n, dtype=np.int32) % 10, spec)


def test_poisson_batches_have_binomial_sizes_and_uniform_inclusion():
  n, batch, steps = 1000, 50, 2000
  sampler = batching.CriticBatchSampler(_train(n), batch, 'poisson', seed=7)
  counts = np.zeros(n)
  sizes = []
  for step in range(steps):
    idx = sampler.indices(step)
    assert len(np.unique(idx)) == len(idx)  # without replacement
    counts[idx] += 1
    sizes.append(len(idx))
  q = batch / n
  sizes = np.array(sizes)
  # Mean and variance of Binomial(n, q), within ~5 standard errors.
  assert abs(sizes.mean() - n * q) < 5 * np.sqrt(n * q * (1 - q) / steps)
  assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.15)
  # Each example's inclusion rate is q: a chi-square test over examples.
  expected = steps * q
  chi2 = np.sum((counts - expected)**2 / (expected * (1 - q)))
  assert abs(chi2 - n) < 5 * np.sqrt(2 * n)
  # Consecutive steps are independent: overlap is about n q^2.
  overlap = np.mean([len(np.intersect1d(sampler.indices(s),
                                        sampler.indices(s + 1)))
                     for s in range(200)])
  assert overlap == pytest.approx(n * q * q, rel=0.3)


def test_same_seed_same_batches_other_seed_different():
  train = _train(500)
  a = batching.CriticBatchSampler(train, 32, 'poisson', seed=1)
  b = batching.CriticBatchSampler(train, 32, 'poisson', seed=1)
  c = batching.CriticBatchSampler(train, 32, 'poisson', seed=2)
  for step in (0, 5, 123456):
    np.testing.assert_array_equal(a.indices(step), b.indices(step))
  assert not np.array_equal(a.indices(0), c.indices(0))


def test_shuffle_covers_each_example_once_per_epoch_in_fixed_batches():
  n, batch = 100, 10
  sampler = batching.CriticBatchSampler(_train(n), batch, 'shuffle', seed=3)
  assert sampler.steps_per_epoch == 10
  for epoch in range(2):
    seen = np.concatenate([sampler.indices(epoch * 10 + s) for s in range(10)])
    assert all(len(sampler.indices(epoch * 10 + s)) == batch
               for s in range(10))
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
  assert not np.array_equal(sampler.indices(0), sampler.indices(10))


def test_dataset_yields_n_critic_batches_per_generator_step():
  train = _train(200)
  sampler = batching.CriticBatchSampler(train, 20, 'poisson', seed=4)
  elements = list(sampler.dataset(3, 5, n_critic=2).as_numpy_iterator())
  assert len(elements) == 2
  for g, element in zip((3, 4), elements):
    assert len(element) == 2
    for c, (images, labels) in enumerate(element):
      idx = sampler.indices(g * 2 + c)
      np.testing.assert_array_equal(images[:, 0, 0, 0], idx.astype(np.uint8))
      np.testing.assert_array_equal(labels, idx % 10)


def test_unknown_sampling_is_rejected():
  with pytest.raises(ValueError, match='--sampling'):
    batching.CriticBatchSampler(_train(10), 2, 'bootstrap', seed=0)
