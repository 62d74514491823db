"""Sample-quality metrics on feature vectors: pure numpy/scipy, no TF.

Both metrics compare two sets of feature vectors (rows), so the same code
serves every feature space `evaluation.py` uses (InceptionV3 pool features
for FID proper, a dataset classifier's penultimate layer for the always
available `domain_fid`).

* Fréchet distance (Heusel et al., 2017): fit a Gaussian to each set and take
  ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). One number for both
  fidelity and diversity, and biased upwards for small sets, so values are
  only comparable at equal set sizes.
* Precision and recall (Kynkäänniemi et al., 2019) separate the two: each set
  is approximated by the union of balls around its points, each ball reaching
  the point's k-th nearest neighbour in its own set. Precision is the
  fraction of generated points inside the real manifold (fidelity), recall
  the fraction of real points inside the generated one (diversity).
"""

import warnings

import numpy as np
from scipy import linalg

# Rows of the distance matrix computed at once in the k-NN searches; bounds
# memory to _ROWS * N floats.
_ROWS = 1024


def _moments(features: np.ndarray):
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError('features must be a matrix [N >= 2, D], got shape '
                     f'{features.shape}.')
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """Fréchet distance between Gaussians fitted to two feature sets [N, D]."""
  mu_a, cov_a = _moments(features_a)
  mu_b, cov_b = _moments(features_b)
  return gaussian_frechet_distance(mu_a, cov_a, mu_b, cov_b)


def gaussian_frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
  """The closed form between N(mu_a, cov_a) and N(mu_b, cov_b).

  The matrix square root of a product of (near-)singular covariances (fewer
  samples than dimensions, or dead ReLU features) can come out non-finite;
  as in the reference TTUR implementation, a small ridge is then added to
  both. scipy's warning about singular input is silenced: singular
  covariances are the normal case for ReLU features, and the result is
  checked here instead.
  """
  mu_a, mu_b = np.atleast_1d(mu_a), np.atleast_1d(mu_b)
  cov_a, cov_b = np.atleast_2d(cov_a), np.atleast_2d(cov_b)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', linalg.LinAlgWarning)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
      ridge = np.eye(len(cov_a)) * 1e-6
      covmean = linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge))
  # Rounding leaves a tiny imaginary part on a real-valued root.
  covmean = np.real(covmean)
  diff = mu_a - mu_b
  distance = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(
      covmean)
  # Rounding can leave a tiny negative value for identical sets.
  return float(max(distance, 0.0))


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
  return np.maximum(d, 0.0)


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
  """Squared distance from each row to its k-th nearest other row."""
  features = np.asarray(features, np.float64)
  if not 1 <= k < len(features):
    raise ValueError(f'k={k} needs 1 <= k < number of points '
                     f'({len(features)}).')
  radii = np.empty(len(features))
  for start in range(0, len(features), _ROWS):
    d = _squared_distances(features[start:start + _ROWS], features)
    # Index k, not k - 1: the nearest point (distance 0) is the row itself.
    radii[start:start + _ROWS] = np.partition(d, k, axis=1)[:, k]
  return radii


def fraction_in_manifold(manifold: np.ndarray, radii: np.ndarray,
                         queries: np.ndarray) -> float:
  """Fraction of `queries` inside some ball (manifold[i], radius radii[i])."""
  manifold = np.asarray(manifold, np.float64)
  queries = np.asarray(queries, np.float64)
  inside = 0
  for start in range(0, len(queries), _ROWS):
    d = _squared_distances(queries[start:start + _ROWS], manifold)
    inside += int((d <= radii[None, :]).any(axis=1).sum())
  return inside / len(queries)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict:
  """Improved precision and recall (Kynkäänniemi et al., 2019); k=3 is theirs.

  Returns:
    {'precision': fraction of fake in the real manifold,
     'recall': fraction of real in the fake manifold, 'k': k}.
  """
  return {
      'precision': fraction_in_manifold(real, knn_radii(real, k), fake),
      'recall': fraction_in_manifold(fake, knn_radii(fake, k), real),
      'k': k,
  }
