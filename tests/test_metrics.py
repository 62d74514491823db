"""Fréchet distance and k-NN precision/recall on sets with known answers."""

import numpy as np
import pytest

from dpgan_tf import metrics


def test_frechet_distance_of_a_set_with_itself_is_zero():
  x = np.random.default_rng(0).normal(size=(500, 16))
  assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_two_gaussians_matches_closed_form():
  """Diagonal Gaussians: |mu_a - mu_b|^2 + sum (sqrt(v_a) - sqrt(v_b))^2."""
  rng = np.random.default_rng(1)
  d, n = 4, 200000
  mu_a, mu_b = np.zeros(d), np.array([1.0, -2.0, 0.5, 0.0])
  var_a, var_b = np.array([1.0, 4.0, 0.25, 1.0]), np.array([2.0, 1.0, 1.0, 9.0])
  a = mu_a + rng.normal(size=(n, d)) * np.sqrt(var_a)
  b = mu_b + rng.normal(size=(n, d)) * np.sqrt(var_b)
  expected = np.sum((mu_a - mu_b)**2) + np.sum(
      (np.sqrt(var_a) - np.sqrt(var_b))**2)
  assert metrics.gaussian_frechet_distance(
      mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(expected)
  assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


def test_frechet_distance_survives_singular_covariances():
  """Fewer points than dimensions: still finite and non-negative."""
  rng = np.random.default_rng(2)
  d = metrics.frechet_distance(rng.normal(size=(10, 50)),
                               rng.normal(size=(10, 50)))
  assert np.isfinite(d) and d >= 0


def test_frechet_distance_rejects_a_vector():
  with pytest.raises(ValueError, match='matrix'):
    metrics.frechet_distance(np.zeros(5), np.zeros(5))


def test_knn_radii_exclude_the_point_itself():
  points = np.array([[0.0], [1.0], [3.0], [7.0]])
  np.testing.assert_allclose(metrics.knn_radii(points, 1), [1, 1, 4, 16])
  np.testing.assert_allclose(metrics.knn_radii(points, 2), [9, 4, 9, 36])


def test_precision_recall_on_constructed_sets():
  """Fakes half on the real cluster, half far away; reals on two clusters,
  one of which the fakes miss: precision 1/2, recall 1/2."""
  rng = np.random.default_rng(3)
  cluster = lambda centre, n: centre + rng.normal(scale=0.1, size=(n, 2))
  real = np.concatenate([cluster(0.0, 200), cluster(10.0, 200)])
  fake = np.concatenate([cluster(0.0, 200), cluster(-10.0, 200)])
  result = metrics.precision_recall(real, fake, k=3)
  assert result['precision'] == pytest.approx(0.5, abs=0.03)
  assert result['recall'] == pytest.approx(0.5, abs=0.03)
  assert result['k'] == 3


def test_precision_recall_of_identical_sets_is_one():
  x = np.random.default_rng(4).normal(size=(300, 8))
  assert metrics.precision_recall(x, x) == {'precision': 1.0, 'recall': 1.0,
                                            'k': 3}


def test_precision_recall_spans_row_blocks(monkeypatch):
  """Blocked distance computation gives the same answer as one block."""
  rng = np.random.default_rng(5)
  real, fake = rng.normal(size=(70, 3)), rng.normal(0.5, size=(50, 3))
  whole = metrics.precision_recall(real, fake)
  monkeypatch.setattr(metrics, '_ROWS', 16)
  assert metrics.precision_recall(real, fake) == whole


def test_knn_radii_rejects_k_too_large():
  with pytest.raises(ValueError, match='k=5'):
    metrics.knn_radii(np.zeros((5, 2)), 5)
