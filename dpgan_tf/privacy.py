"""The privacy side of training: accounting, the ledger, and the DP optimizer.

Every critic update is one application of the subsampled Gaussian mechanism:
a batch drawn with sampling rate q, per-microbatch gradients clipped to L2 norm
C, summed, and Gaussian noise of standard deviation sigma*C added. The RDP
accountant (dp_accounting, the library behind TF-Privacy) composes these.
Generator updates read no real data and are post-processing: they cost
nothing.

A run may first release, once, a statistic of the private data with the
Gaussian mechanism (the warm start, warm_start.py); the generator is then
pre-trained on that release (post-processing). Its one GaussianDpEvent is
composed with the critic updates' events, and epsilon is always that of the
composition.

Microbatches of more than one example: the guarantee is stated for adding or
removing one *example*. Adding an example to an existing microbatch moves that
microbatch's clipped gradient anywhere in the ball of radius C, a change of up
to 2C, so the mechanism's noise multiplier is sigma/2 for accounting. With one
example per microbatch (the default) it is sigma.
"""

import functools
import math
from typing import Optional

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant
import numpy as np
import tensorflow as tf
from tensorflow_privacy.privacy.dp_query import gaussian_query
from tensorflow_privacy.privacy.optimizers import dp_optimizer_keras

from dpgan_tf import config as config_lib
from dpgan_tf import dp_gradients

ACCOUNTANT = 'rdp'


def effective_noise_multiplier(noise_multiplier: float,
                               microbatch_size: int) -> float:
  """sigma for accounting: sensitivity is C per example, 2C per shared microbatch."""
  return noise_multiplier if microbatch_size == 1 else noise_multiplier / 2.0


def dp_event(noise_multiplier: float, sampling_probability: float,
             steps: int, microbatch_size: int = 1) -> dp_accounting.DpEvent:
  """The DpEvent of `steps` critic updates."""
  sigma = effective_noise_multiplier(noise_multiplier, microbatch_size)
  return dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(
          sampling_probability, dp_accounting.GaussianDpEvent(sigma)), steps)


def composed_dp_event(noise_multiplier: float, sampling_probability: float,
                      steps: int, microbatch_size: int = 1,
                      warm_start_noise_multiplier: float = 0.0
                      ) -> dp_accounting.DpEvent:
  """The warm start's release (if any: sigma > 0), then `steps` critic
  updates. The release's statistic has L2 sensitivity 1, so its noise
  multiplier is its noise's standard deviation."""
  critic = dp_event(noise_multiplier, sampling_probability, steps,
                    microbatch_size)
  if not warm_start_noise_multiplier:
    return critic
  return dp_accounting.ComposedDpEvent([
      dp_accounting.GaussianDpEvent(warm_start_noise_multiplier), critic])


def compute_epsilon(noise_multiplier: float, sampling_probability: float,
                    steps: int, delta: float, microbatch_size: int = 1,
                    warm_start_noise_multiplier: float = 0.0) -> float:
  """epsilon after the warm start (if any) and `steps` critic updates, by
  the RDP accountant.

  The same number, bit for bit, as composing composed_dp_event(...) into a
  fresh RdpAccountant and asking it for epsilon (tests/test_privacy.py and
  tests/test_warm_start.py check).
  """
  return EpsilonCurve(noise_multiplier, sampling_probability, delta,
                      microbatch_size, warm_start_noise_multiplier)(steps)


@functools.lru_cache(maxsize=32)
def _rdp_of_one_step(noise_multiplier: float, sampling_probability: float,
                     microbatch_size: int) -> tuple:
  """(orders, RDP of one critic update at each order), computed once.

  One evaluation of the subsampled Gaussian's RDP at the accountant's 155
  orders takes ~0.5 s, and a run asks for epsilon again and again (its plan,
  every log line, the guarantee, the export, eval's report) with the same
  sigma and q. The arrays are read-only: callers cannot change the cache.
  """
  return _read_only_rdp(dp_event(noise_multiplier, sampling_probability, 1,
                                 microbatch_size))


@functools.lru_cache(maxsize=8)
def _rdp_of_gaussian(noise_multiplier: float) -> tuple:
  """(orders, RDP of one Gaussian release, the warm start's), computed once."""
  return _read_only_rdp(dp_accounting.GaussianDpEvent(noise_multiplier))


def _read_only_rdp(event: dp_accounting.DpEvent) -> tuple:
  """(orders, RDP of `event` at each order) as a fresh RdpAccountant has
  them. Read-only: the callers cache them."""
  accountant = rdp_privacy_accountant.RdpAccountant()
  accountant.compose(event)
  orders = np.array(accountant._orders)  # pylint: disable=protected-access
  rdp = np.array(accountant._rdp)  # pylint: disable=protected-access
  orders.flags.writeable = rdp.flags.writeable = False
  return orders, rdp


class EpsilonCurve:
  """epsilon(t) for t = 0..T critic steps, from one RDP computation.

  RDP composes linearly: t steps cost t times the RDP of one step at every
  order (exactly what RdpAccountant computes for t self-composed steps), plus
  the warm start's release if the run made one. Computing one step's RDP
  once makes epsilon at every step cheap enough to report after each update.

  A noise multiplier of 0 stands for a run with no DP-SGD phase (its warm
  start took the whole budget): it takes no critic steps, and any step would
  have no guarantee (epsilon infinite).
  """

  def __init__(self, noise_multiplier, sampling_probability, delta,
               microbatch_size=1, warm_start_noise_multiplier=0.0):
    self._rdp_one_step = None
    if noise_multiplier:
      self._orders, self._rdp_one_step = _rdp_of_one_step(
          float(noise_multiplier), float(sampling_probability),
          int(microbatch_size))
    self._rdp_warm_start = None
    if warm_start_noise_multiplier:
      self._orders, self._rdp_warm_start = _rdp_of_gaussian(
          float(warm_start_noise_multiplier))
    self._delta = delta

  def __call__(self, steps: int) -> float:
    if steps and self._rdp_one_step is None:
      return math.inf
    terms = ([steps * self._rdp_one_step] if steps else []) + (
        [] if self._rdp_warm_start is None else [self._rdp_warm_start])
    if not terms:
      return 0.0
    eps, _ = rdp_privacy_accountant.compute_epsilon(self._orders, sum(terms),
                                                    self._delta)
    return float(eps)

  def max_steps(self, target_epsilon: float, upper: int) -> int:
    """The largest t <= upper with epsilon(t) <= target (epsilon grows with t)."""
    if self(upper) <= target_epsilon:
      return upper
    lo, hi = 0, upper  # epsilon(lo) <= target < epsilon(hi)
    while hi - lo > 1:
      mid = (lo + hi) // 2
      if self(mid) <= target_epsilon:
        lo = mid
      else:
        hi = mid
    return lo


def calibrate_noise_multiplier(target_epsilon: float, delta: float,
                               sampling_probability: float, steps: int,
                               microbatch_size: int = 1,
                               warm_start_noise_multiplier: float = 0.0
                               ) -> float:
  """The smallest sigma whose `steps` updates, composed with the warm start's
  release (if any), spend at most target_epsilon."""
  sigma = dp_accounting.calibrate_dp_mechanism(
      rdp_privacy_accountant.RdpAccountant,
      lambda s: composed_dp_event(s, sampling_probability, steps,
                                  microbatch_size, warm_start_noise_multiplier),
      target_epsilon, delta,
      dp_accounting.LowerEndpointAndGuess(1e-2, 1.0),
      tol=1e-4)
  # calibrate_dp_mechanism returns a value on the safe side of its bracket.
  assert compute_epsilon(sigma, sampling_probability, steps, delta,
                         microbatch_size,
                         warm_start_noise_multiplier) <= target_epsilon
  return float(sigma)


def calibrate_warm_start_noise_multiplier(epsilon: float,
                                          delta: float) -> float:
  """The smallest sigma for which the warm start's release alone (one
  Gaussian mechanism of sensitivity 1) is (epsilon, delta)-DP by the RDP
  accountant: its share of the budget."""
  sigma = dp_accounting.calibrate_dp_mechanism(
      rdp_privacy_accountant.RdpAccountant, dp_accounting.GaussianDpEvent,
      epsilon, delta, dp_accounting.LowerEndpointAndGuess(1e-2, 1.0),
      tol=1e-4)
  assert warm_start_epsilon(sigma, delta) <= epsilon
  return float(sigma)


def warm_start_epsilon(warm_start_noise_multiplier: float,
                       delta: float) -> float:
  """epsilon of the warm start's release alone (what it spent)."""
  orders, rdp = _rdp_of_gaussian(float(warm_start_noise_multiplier))
  eps, _ = rdp_privacy_accountant.compute_epsilon(orders, rdp, delta)
  return float(eps)


class PrivacyLedger(tf.Module):
  """What the guarantee depends on, saved in every checkpoint.

  sigma, q, delta, the sampling scheme, the dataset size and the microbatch
  size are fixed when a run starts; `critic_steps` counts the critic updates
  whose results are kept (it is checkpointed together with the weights, so a
  crash never loses or double-counts a step). epsilon is always computed from
  these, never tracked separately.

  A run with a warm start also keeps its release's sigma and
  `warm_start_releases` (1 once the release is drawn, checkpointed with it).
  Only such runs have these variables (warm_start_noise_multiplier not None),
  so the checkpoints of runs without one keep their layout and older ones
  still restore; as_dict reports 0 for them.
  """

  def __init__(self, noise_multiplier=0.0, sampling_probability=0.0, delta=0.0,
               dataset_size=0, microbatch_size=1, l2_norm_clip=0.0,
               sampling='poisson', dataset='',
               warm_start_noise_multiplier: Optional[float] = None):
    super().__init__(name='privacy_ledger')
    self.noise_multiplier = tf.Variable(noise_multiplier, dtype=tf.float64,
                                        trainable=False)
    self.sampling_probability = tf.Variable(sampling_probability,
                                            dtype=tf.float64, trainable=False)
    self.delta = tf.Variable(delta, dtype=tf.float64, trainable=False)
    self.l2_norm_clip = tf.Variable(l2_norm_clip, dtype=tf.float64,
                                    trainable=False)
    self.dataset_size = tf.Variable(dataset_size, dtype=tf.int64,
                                    trainable=False)
    self.microbatch_size = tf.Variable(microbatch_size, dtype=tf.int64,
                                       trainable=False)
    self.sampling = tf.Variable(sampling, dtype=tf.string, trainable=False)
    self.dataset = tf.Variable(dataset, dtype=tf.string, trainable=False)
    self.critic_steps = tf.Variable(
        0, dtype=tf.int64, trainable=False,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    if warm_start_noise_multiplier is not None:
      self.warm_start_noise_multiplier = tf.Variable(
          warm_start_noise_multiplier, dtype=tf.float64, trainable=False)
      self.warm_start_releases = tf.Variable(0, dtype=tf.int64,
                                             trainable=False)

  def as_dict(self) -> dict:
    """Plain Python values, for reports and comparisons."""
    return {
        'dataset': self.dataset.numpy().decode(),
        'noise_multiplier': float(self.noise_multiplier.numpy()),
        'sampling_rate': float(self.sampling_probability.numpy()),
        'delta': float(self.delta.numpy()),
        'l2_norm_clip': float(self.l2_norm_clip.numpy()),
        'dataset_size': int(self.dataset_size.numpy()),
        'microbatch_size': int(self.microbatch_size.numpy()),
        'sampling': self.sampling.numpy().decode(),
        'critic_steps': int(self.critic_steps.numpy()),
        'warm_start_noise_multiplier': float(
            self.warm_start_noise_multiplier.numpy()
            if hasattr(self, 'warm_start_noise_multiplier') else 0.0),
        'warm_start_releases': int(
            self.warm_start_releases.numpy()
            if hasattr(self, 'warm_start_releases') else 0),
    }

  def released_warm_start_noise_multiplier(self) -> float:
    """The warm start's sigma once its release is drawn, else 0 (nothing
    released, nothing spent)."""
    d = self.as_dict()
    return d['warm_start_noise_multiplier'] if d['warm_start_releases'] else 0.0

  def curve(self) -> EpsilonCurve:
    d = self.as_dict()
    return EpsilonCurve(d['noise_multiplier'], d['sampling_rate'], d['delta'],
                        d['microbatch_size'],
                        self.released_warm_start_noise_multiplier())

  def epsilon(self, steps: Optional[int] = None) -> float:
    d = self.as_dict()
    return self.curve()(d['critic_steps'] if steps is None else steps)


def guarantee_statement(ledger: PrivacyLedger) -> str:
  """One line saying what was spent and how it was accounted."""
  d = ledger.as_dict()
  eps = ledger.epsilon()
  warm_sigma = ledger.released_warm_start_noise_multiplier()
  warm = (f'a warm-start Gaussian release, sigma={warm_sigma:.4g}, '
          'composed with ' if warm_sigma else '')
  critic = (f'sigma={d["noise_multiplier"]:.4g}, q={d["sampling_rate"]:.4g}, '
            f'{d["critic_steps"]} critic steps, {d["sampling"]} sampling')
  if not d['noise_multiplier']:
    warm = (f'one warm-start Gaussian release, sigma={warm_sigma:.4g}, L2 '
            'sensitivity 1, ' if warm_sigma else 'nothing released yet, ')
    critic = 'no DP-SGD phase'
  text = (f'({eps:.4g}, {d["delta"]:.3g})-DP for each training example '
          f'[RDP accountant, {warm}{critic}')
  if d['sampling'] == 'shuffle' and d['noise_multiplier']:
    text += ('; Poisson accounting applied to shuffled fixed-size batches is '
             'the common approximation, not a proven bound')
  return text + ']'


class SeededGaussianSumQuery(gaussian_query.GaussianSumQuery):
  """TF-Privacy's GaussianSumQuery with noise from a stateless RNG.

  The stock query draws noise from a stateful op whose state is not
  checkpointed: a resumed run would replay the noise of step 0 onwards,
  adding correlated noise the accountant assumes independent. Here the noise
  of every critic step is keyed by (run seed, critic step), held in
  `noise_seed`, which the training step sets before each update. Clipping and
  summation are the parent's.
  """

  def __init__(self, l2_norm_clip, stddev, noise_seed: tf.Variable):
    super().__init__(l2_norm_clip, stddev)
    self.noise_seed = noise_seed

  def get_noised_result(self, sample_state, global_state):
    leaves = tf.nest.flatten(sample_state)
    noised = []
    for i, v in enumerate(leaves):
      seed = tf.random.experimental.stateless_fold_in(self.noise_seed, i)
      noise = tf.random.stateless_normal(tf.shape(v), seed, stddev=tf.cast(
          global_state.stddev, tf.float32))
      noised.append(v + tf.cast(noise, v.dtype))
    event = dp_accounting.GaussianDpEvent(global_state.stddev /
                                          global_state.l2_norm_clip)
    return tf.nest.pack_sequence_as(sample_state, noised), global_state, event


def _already_global(grads_and_vars):
  """The critic's gradients need no aggregation across replicas: the
  engines all-reduce the clipped sums before noising, so every replica holds
  the same global noised mean."""
  return grads_and_vars


class DPCriticAdamOptimizer(dp_optimizer_keras.GenericDPAdamOptimizer):
  """TF-Privacy's DPKerasAdamOptimizer whose gradient computation is one of
  dp_gradients' per-example engines, with a resumable noise source.

  `DPKerasAdamOptimizer(l2_norm_clip, noise_multiplier, num_microbatches)`
  is this class's parent built on a GaussianSumQuery(C, sigma C); here the
  query is the seeded one above (same clip and stddev). The critic update is
  the documented `minimize(loss, var_list)`, with a
  `dp_gradients.PrivateLoss` as the loss: `_compute_gradients` clips each
  microbatch by the chosen engine, noises the sum once with the query and
  divides by the expected number of microbatches. `jacobian` is the parent's
  own `_compute_gradients`, kept as the reference; any other loss (a tensor
  of per-microbatch losses with its tape, as in TF-Privacy's tutorials) goes
  to the parent unchanged.
  """

  def __init__(self, l2_norm_clip: float, noise_multiplier: float,
               num_microbatches: Optional[int], noise_seed: tf.Variable,
               grad_engine: str = 'ghost', chunk_size: int = 128,
               **adam_kwargs):
    if grad_engine not in config_lib.GRAD_ENGINES:
      raise ValueError(f'--grad_engine={grad_engine!r}: choose one of '
                       f'{config_lib.GRAD_ENGINES}.')
    super().__init__(
        SeededGaussianSumQuery(l2_norm_clip, l2_norm_clip * noise_multiplier,
                               noise_seed),
        num_microbatches, gradient_aggregator=_already_global, **adam_kwargs)
    self.grad_engine = grad_engine
    self.chunk_size = chunk_size
    # The unclipped microbatch norms of the last gradient computation, for
    # the opt-in non-private diagnostics (empty for jacobian).
    self.record_norms = tf.zeros([0])

  @property
  def l2_norm_clip(self) -> tf.Tensor:
    return tf.cast(self._dp_sum_query.derive_sample_params(self._global_state),
                   tf.float32)

  def _compute_gradients(self, loss, var_list, grad_loss=None, tape=None):
    if not isinstance(loss, dp_gradients.PrivateLoss):
      return super()._compute_gradients(loss, var_list, grad_loss, tape)
    var_list = list(var_list)
    if self.grad_engine == 'jacobian':
      grads = self._jacobian_mean(loss, var_list)
    else:
      sums, self.record_norms = dp_gradients.clipped_sums(
          self.grad_engine, self.l2_norm_clip, loss.loss_fn, loss.model,
          loss.records, loss.microbatch_size, self.chunk_size,
          loss.differentiates_inputs)
      grads = self._noised_mean(sums, loss.expected_microbatches)
    if loss.public_loss_fn is not None:
      public, _ = dp_gradients.clipped_sums(
          self.grad_engine, self.l2_norm_clip, loss.public_loss_fn,
          loss.model, loss.public_records, 1, self.chunk_size)
      grads = [g + p / loss.expected_public_records
               for g, p in zip(grads, public)]
    return list(zip(grads, var_list))

  def _noised_mean(self, sums, expected_microbatches: float):
    """The query's noised sum over the expected number of microbatches."""
    self._was_dp_gradients_called = True
    noised, self._global_state, _ = self._dp_sum_query.get_noised_result(
        sums, self._global_state)
    return [g / expected_microbatches for g in noised]

  def _jacobian_mean(self, loss: dp_gradients.PrivateLoss, var_list):
    """The parent's jacobian path, rescaled from the microbatches it was
    given to the expected number. It cannot take an empty Poisson batch (its
    jacobian fails on zero rows): the mechanism's output is then the noise
    alone."""
    records = loss.records
    used = tf.shape(tf.nest.flatten(records)[0])[0] // loss.microbatch_size
    expected = tf.cast(loss.expected_microbatches, tf.float32)

    def jacobian():
      with tf.GradientTape() as tape:
        losses = loss.loss_fn(records)
      grads_and_vars = super(DPCriticAdamOptimizer, self)._compute_gradients(
          losses, var_list, tape=tape)
      return [g * tf.cast(used, tf.float32) / expected
              for g, _ in grads_and_vars]

    noise_alone = lambda: self._noised_mean(
        [tf.zeros_like(v) for v in var_list], expected)
    return tf.cond(used > 0, jacobian, noise_alone)
