"""Accounting, calibration and the ledger against independent computations."""

import math

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant
import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_privacy.privacy.dp_query import gaussian_query

from dpgan_tf import privacy


def _independent_epsilon(sigma, q, steps, delta, one_at_a_time=True):
  """Straight from dp_accounting (one event per step, for small counts)."""
  accountant = rdp_privacy_accountant.RdpAccountant()
  event = dp_accounting.PoissonSampledDpEvent(
      q, dp_accounting.GaussianDpEvent(sigma))
  if one_at_a_time:
    for _ in range(steps):
      accountant.compose(event)
  else:
    accountant.compose(event, count=steps)
  return accountant.get_epsilon(delta)


@pytest.mark.parametrize('sigma,q,steps', [(1.1, 0.01, 20), (0.7, 0.05, 37),
                                           (2.0, 256 / 60000, 12)])
def test_epsilon_matches_dp_accounting(sigma, q, steps):
  expected = _independent_epsilon(sigma, q, steps, 1e-5)
  assert privacy.compute_epsilon(sigma, q, steps, 1e-5) == pytest.approx(
      expected, rel=1e-9)
  curve = privacy.EpsilonCurve(sigma, q, 1e-5)
  assert curve(steps) == pytest.approx(expected, rel=1e-9)


def test_epsilon_for_many_steps_matches_dp_accounting_count():
  q, steps = 256 / 60000, 60 * 60000 // 256
  expected = _independent_epsilon(1.1, q, steps, 1e-5, one_at_a_time=False)
  assert privacy.EpsilonCurve(1.1, q, 1e-5)(steps) == pytest.approx(expected,
                                                                    rel=1e-9)


def test_repeated_epsilon_equals_a_fresh_accountant_bit_for_bit():
  # Later calls with the same sigma and q reuse one step's cached RDP.
  q = 512 / 55000
  for steps in (1, 1070, 1070, 4280):
    assert privacy.compute_epsilon(1.469, q, steps, 1e-5) == (
        _independent_epsilon(1.469, q, steps, 1e-5, one_at_a_time=False))
  assert privacy.compute_epsilon(1.469, q, 1070, 1e-6) == (
      _independent_epsilon(1.469, q, 1070, 1e-6, one_at_a_time=False))


def test_shared_microbatches_are_accounted_at_half_sigma():
  assert privacy.compute_epsilon(2.0, 0.02, 10, 1e-5, microbatch_size=4) == (
      pytest.approx(_independent_epsilon(1.0, 0.02, 10, 1e-5), rel=1e-9))


def test_zero_steps_cost_nothing():
  assert privacy.compute_epsilon(1.0, 0.1, 0, 1e-5) == 0.0
  assert privacy.EpsilonCurve(1.0, 0.1, 1e-5)(0) == 0.0


def test_calibration_meets_target_tightly():
  sigma = privacy.calibrate_noise_multiplier(2.0, 1e-5, 0.01, 1000)
  assert _independent_epsilon(sigma, 0.01, 1000, 1e-5,
                              one_at_a_time=False) <= 2.0
  assert privacy.compute_epsilon(sigma * 0.99, 0.01, 1000, 1e-5) > 2.0


def test_max_steps_is_the_last_step_within_budget():
  curve = privacy.EpsilonCurve(1.0, 0.02, 1e-5)
  t = curve.max_steps(3.0, 10**6)
  assert curve(t) <= 3.0 < curve(t + 1)
  assert curve.max_steps(3.0, 10) == 10  # budget not binding


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(target=st.floats(0.5, 20), q=st.floats(1e-3, 0.2),
                  steps=st.integers(1, 3000))
def test_calibrated_sigma_never_exceeds_target(target, q, steps):
  sigma = privacy.calibrate_noise_multiplier(target, 1e-5, q, steps)
  assert privacy.compute_epsilon(sigma, q, steps, 1e-5) <= target


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(sigma=st.floats(0.5, 5), q=st.floats(1e-3, 0.5),
                  steps=st.integers(1, 5000), more=st.integers(1, 500),
                  dq=st.floats(1e-4, 0.4))
def test_epsilon_is_monotone_in_steps_and_q(sigma, q, steps, more, dq):
  eps = privacy.compute_epsilon(sigma, q, steps, 1e-5)
  assert privacy.compute_epsilon(sigma, q, steps + more, 1e-5) >= eps
  assert privacy.compute_epsilon(sigma, min(q + dq, 1.0), steps, 1e-5) >= eps


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(sigma=st.floats(0.3, 10), q=st.floats(1e-4, 1.0),
                  delta=st.floats(1e-9, 1e-3), steps=st.integers(0, 10**6),
                  n=st.integers(1, 10**7), k=st.integers(1, 8),
                  sampling=st.sampled_from(['poisson', 'shuffle']))
def test_ledger_round_trips_through_a_checkpoint(tmp_path_factory, sigma, q,
                                                 delta, steps, n, k, sampling):
  ledger = privacy.PrivacyLedger(sigma, q, delta, n, k, 1.5, sampling, 'mnist')
  ledger.critic_steps.assign(steps)
  path = tf.train.Checkpoint(ledger=ledger).save(
      str(tmp_path_factory.mktemp('ledger') / 'ckpt'))
  restored = privacy.PrivacyLedger()
  tf.train.Checkpoint(ledger=restored).restore(path).assert_consumed()
  assert restored.as_dict() == ledger.as_dict()
  assert restored.epsilon() == ledger.epsilon()


def test_seeded_query_noise_is_keyed_by_the_seed_only():
  seed = tf.Variable([3, 4], dtype=tf.int64)
  query = privacy.SeededGaussianSumQuery(1.0, 2.5, seed)
  state = query.initial_global_state()
  zeros = [tf.zeros([20000]), tf.zeros([3, 3])]
  first, _, event = query.get_noised_result(zeros, state)
  again, _, _ = query.get_noised_result(zeros, state)
  np.testing.assert_array_equal(first[0], again[0])
  assert np.std(first[0].numpy()) == pytest.approx(2.5, rel=0.03)
  assert event == dp_accounting.GaussianDpEvent(2.5)
  seed.assign([3, 5])
  other, _, _ = query.get_noised_result(zeros, state)
  assert not np.allclose(first[0], other[0])
  # Distinct tensors get independent noise.
  assert not np.allclose(first[0][:9], tf.reshape(first[1], [-1]))


def test_dp_optimizer_uses_the_seeded_query_with_same_clip_and_stddev():
  seed = tf.Variable([0, 0], dtype=tf.int64)
  opt = privacy.DPCriticAdamOptimizer(1.5, 0.8, None, seed,
                                      learning_rate=1e-3)
  query = opt._dp_sum_query  # pylint: disable=protected-access
  assert isinstance(query, privacy.SeededGaussianSumQuery)
  assert isinstance(query, gaussian_query.GaussianSumQuery)
  state = opt._global_state  # pylint: disable=protected-access
  assert float(state.l2_norm_clip) == 1.5
  assert float(state.stddev) == pytest.approx(1.2)


def test_guarantee_statement_names_sampling_and_figures():
  ledger = privacy.PrivacyLedger(1.0, 0.01, 1e-5, 1000, 1, 1.0, 'shuffle',
                                 'mnist')
  ledger.critic_steps.assign(10)
  text = privacy.guarantee_statement(ledger)
  assert 'shuffle sampling' in text and 'approximation' in text
  assert f'{ledger.epsilon():.4g}' in text
  assert math.isfinite(ledger.epsilon())
