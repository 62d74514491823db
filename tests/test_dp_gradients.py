"""The DP gradient engines against one-example-at-a-time references.

Every engine must compute the same mechanism: per-microbatch gradients,
clipped by the optimizer's Gaussian query, summed, noised once and divided
by the expected number of microbatches. The references here loop over the
records with an ordinary tape, so they share no code with the engines.
"""

import numpy as np
import pytest
import tensorflow as tf

from dpgan_tf import config as config_lib
from dpgan_tf import dp_gradients
from dpgan_tf import losses
from dpgan_tf import networks
from dpgan_tf import privacy

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 3
BATCH = 7
EXPECTED = 10.0  # Poisson batches: the expected size is not the realised one.


@pytest.fixture(scope='module')
def critic():
  tf.keras.utils.set_random_seed(1)
  return networks.build_critic(IMAGE_SHAPE, NUM_CLASSES, width=4)


def make_records(n, seed=0):
  rng = np.random.default_rng(seed)
  images = lambda: tf.constant(rng.uniform(-1, 1, (n, *IMAGE_SHAPE)),
                               tf.float32)
  return (images(), images(),
          tf.constant(rng.integers(0, NUM_CLASSES, n), tf.int32),
          tf.constant(rng.uniform(0, 1, n), tf.float32))


def loss_fn(loss, critic):
  return lambda records: losses.critic_losses(loss, critic, *records)


def make_optimizer(clip, sigma=0.0, num_microbatches=None, seed=(0, 0),
                   engine='ghost', chunk_size=128):
  return privacy.DPCriticAdamOptimizer(
      clip, sigma, num_microbatches, tf.Variable(seed, dtype=tf.int64), engine,
      chunk_size)


def optimizer_gradients(optimizer, private_loss):
  """The gradients the DP optimizer's minimize() would apply."""
  return [g for g, _ in optimizer._compute_gradients(  # pylint: disable=protected-access
      private_loss, private_loss.model.trainable_variables)]


def private_loss(critic, records, loss='hinge', microbatch_size=1,
                 expected=EXPECTED, **public):
  return dp_gradients.PrivateLoss(
      loss_fn(loss, critic), records, critic, microbatch_size, expected,
      differentiates_inputs=loss == 'wgan_gp', **public)


def private_gradients(engine, critic, records, loss='hinge', clip=1.0,
                      sigma=0.0, microbatch_size=1, chunk_size=128,
                      expected=EXPECTED, seed=(0, 0)):
  """(gradients, norms) as numpy, from one engine."""
  batch = int(records[0].shape[0])
  optimizer = make_optimizer(
      clip, sigma,
      batch // microbatch_size if engine == 'jacobian' else None, seed,
      engine, chunk_size)
  grads = optimizer_gradients(optimizer, private_loss(
      critic, records, loss, microbatch_size, expected))
  return [g.numpy() for g in grads], optimizer.record_norms.numpy()


def per_record_gradients(critic, records, loss='hinge'):
  """Each record's gradient, one record at a time: a list of lists."""
  result = []
  for i in range(int(records[0].shape[0])):
    one = tf.nest.map_structure(lambda t, i=i: t[i:i + 1], records)
    with tf.GradientTape() as tape:
      value = tf.reduce_sum(loss_fn(loss, critic)(one))
    result.append(tape.gradient(value, critic.trainable_variables))
  return result


def global_norm(grads):
  return float(tf.linalg.global_norm(grads))


def assert_grads_close(actual, expected, atol=1e-6):
  assert len(actual) == len(expected)
  for a, e in zip(actual, expected):
    np.testing.assert_allclose(a, e, rtol=1e-4, atol=atol)


@pytest.mark.parametrize('loss', config_lib.CRITIC_LOSSES)
def test_engines_agree_without_noise(critic, loss):
  records = make_records(4)
  reference, _ = private_gradients('jacobian', critic, records, loss,
                                   clip=0.05)
  assert global_norm(reference) > 0
  for engine in ('ghost', 'vectorized'):
    grads, _ = private_gradients(engine, critic, records, loss, clip=0.05)
    assert_grads_close(grads, reference)


@pytest.mark.parametrize('clip', (0.05, 1e6))  # All clipped; none clipped.
def test_engines_agree_with_microbatches(critic, clip):
  records = make_records(8)
  reference, _ = private_gradients('jacobian', critic, records, clip=clip,
                                   microbatch_size=2, expected=4.0)
  for engine in ('ghost', 'vectorized'):
    grads, norms = private_gradients(engine, critic, records, clip=clip,
                                     microbatch_size=2, expected=4.0)
    assert norms.shape == (4,)
    assert_grads_close(grads, reference)


def test_padded_examples_contribute_nothing(critic):
  """Chunks of 2 pad 5 records to 6: the sum and normaliser must not change.

  wgan_gp, because a zero-padded record has a zero hinge or Wasserstein
  gradient (its real and fake are equal) but not a zero penalty gradient.
  """
  records = make_records(5)
  reference, _ = private_gradients('jacobian', critic, records, 'wgan_gp',
                                   clip=1e6)
  norms_by_chunk = []
  for chunk_size in (2, 5):
    grads, norms = private_gradients('vectorized', critic, records, 'wgan_gp',
                                     clip=1e6, chunk_size=chunk_size)
    assert_grads_close(grads, reference)
    norms_by_chunk.append(norms)
  assert norms_by_chunk[0].shape == (5,)
  np.testing.assert_allclose(*norms_by_chunk, rtol=1e-5)


def test_per_example_norms_match_loop(critic):
  records = make_records(BATCH)
  expected = [global_norm(g) for g in per_record_gradients(critic, records)]
  for engine in ('ghost', 'vectorized'):
    _, norms = private_gradients(engine, critic, records)
    np.testing.assert_allclose(norms, expected, rtol=1e-5)


@pytest.mark.parametrize('ghost_norm', (True, False))
def test_ghost_norm_and_formed_gradients_match_loop(critic, monkeypatch,
                                                    ghost_norm):
  """Ghost norm or formed gradients, for every layer: same norms, same sum.

  The shape rule picks one per layer; forcing each on all layers (Conv2D
  and Dense, microbatches of 2) checks both against the loop.
  """
  monkeypatch.setattr(dp_gradients, 'ghost_norm_is_cheaper',
                      lambda *_: ghost_norm)
  records = make_records(6)
  per_record = per_record_gradients(critic, records)
  pairs = [[(a + b) / 2 for a, b in zip(per_record[i], per_record[i + 1])]
           for i in range(0, 6, 2)]
  clip = float(np.median([global_norm(g) for g in pairs]))
  scales = [min(1.0, clip / global_norm(g)) for g in pairs]
  expected = [sum(s * t for s, t in zip(scales, parts)) / 3.0
              for parts in zip(*pairs)]
  grads, norms = private_gradients('ghost', critic, records, clip=clip,
                                   microbatch_size=2, expected=3.0)
  np.testing.assert_allclose(norms, [global_norm(g) for g in pairs],
                             rtol=1e-5)
  assert_grads_close(grads, expected)


def test_ghost_norm_rule_on_the_presets_layers():
  """(positions S over both critic calls, inputs K, outputs O) per layer."""
  cheaper = dp_gradients.ghost_norm_is_cheaper
  assert cheaper(2, 10, 6272)  # class projection, MNIST width 64
  assert cheaper(32, 2048, 256)  # CIFAR's last convolution, width 64
  assert not cheaper(98, 1024, 128)  # MNIST's second convolution, width 64
  assert not cheaper(98, 512, 64)  # ... width 32
  assert not cheaper(392, 16, 64)  # MNIST's first convolution
  assert not cheaper(2, 6272, 1)  # the unconditional score


@pytest.mark.parametrize('engine', config_lib.GRAD_ENGINES)
def test_clipping_matches_query_preprocess_record(critic, engine):
  records = make_records(BATCH)
  per_record = per_record_gradients(critic, records)
  clip = float(np.median([global_norm(g) for g in per_record]))
  query = make_optimizer(clip)._dp_sum_query  # pylint: disable=protected-access
  params = query.derive_sample_params(query.initial_global_state())
  clipped = [query.preprocess_record(params, g) for g in per_record]
  expected = [tf.add_n(parts) / EXPECTED for parts in zip(*clipped)]
  grads, _ = private_gradients(engine, critic, records, clip=clip)
  assert_grads_close(grads, expected)


@pytest.mark.parametrize('engine', config_lib.GRAD_ENGINES)
def test_tiny_clip_clips_each_example(critic, engine):
  records = make_records(BATCH)
  clip = 1e-4
  units = [[t / global_norm(g) for t in g]
           for g in per_record_gradients(critic, records)]
  expected = [clip * tf.add_n(parts) / EXPECTED for parts in zip(*units)]
  grads, _ = private_gradients(engine, critic, records, clip=clip)
  assert_grads_close(grads, expected, atol=1e-10)
  assert global_norm(grads) <= BATCH * clip / EXPECTED * (1 + 1e-5)


@pytest.mark.parametrize('engine', config_lib.GRAD_ENGINES)
def test_huge_clip_is_the_plain_gradient(critic, engine):
  records = make_records(BATCH)
  with tf.GradientTape() as tape:
    total = tf.reduce_sum(loss_fn('hinge', critic)(records))
  expected = [g / EXPECTED for g in
              tape.gradient(total, critic.trainable_variables)]
  grads, _ = private_gradients(engine, critic, records, clip=1e6)
  assert_grads_close(grads, expected)


def test_noise_std_is_sigma_times_clip(critic):
  records = make_records(BATCH)
  clip, sigma = 0.5, 2.0
  clean, _ = private_gradients('ghost', critic, records, clip=clip)
  noised, _ = private_gradients('ghost', critic, records, clip=clip,
                                sigma=sigma, seed=(3, 4))
  noise = np.concatenate([((n - c) * EXPECTED).ravel()
                          for n, c in zip(noised, clean)])
  assert noise.size > 2000  # The std's standard error is under 1.6%.
  np.testing.assert_allclose(noise.mean(), 0.0, atol=0.1 * sigma * clip)
  np.testing.assert_allclose(noise.std(), sigma * clip, rtol=0.05)
  # Every engine draws the same noise from the same seed: same update.
  for engine in ('vectorized', 'jacobian'):
    grads, _ = private_gradients(engine, critic, records, clip=clip,
                                 sigma=sigma, seed=(3, 4))
    assert_grads_close(grads, noised, atol=1e-5)


@pytest.mark.parametrize('engine', ('ghost', 'vectorized'))
def test_poisson_batch_sizes_in_one_graph(critic, engine):
  """One traced step serves every batch size, the empty batch included."""
  optimizer = make_optimizer(0.05, engine=engine, chunk_size=4)
  spec = tf.nest.map_structure(
      lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype), make_records(1))

  @tf.function(input_signature=[spec])
  def step(records):
    return optimizer_gradients(optimizer, private_loss(critic, records))

  for n in (3, 6):
    records = make_records(n, seed=n)
    other = 'vectorized' if engine == 'ghost' else 'ghost'
    expected, _ = private_gradients(other, critic, records, clip=0.05)
    assert_grads_close([g.numpy() for g in step(records)], expected)
  empty = step(make_records(0))
  assert all(not np.any(g.numpy()) for g in empty)
  assert step.experimental_get_tracing_count() == 1


def test_empty_poisson_batch_is_noise_alone(critic):
  """No example, same noise from every engine: the update is still private."""
  def empty_batch_update(engine):
    optimizer = make_optimizer(0.5, 2.0, None, (3, 4), engine)
    update = tf.function(lambda records: optimizer_gradients(
        optimizer, private_loss(critic, records)))  # Compiled, as in training.
    return [g.numpy() for g in update(make_records(0))]

  noise = empty_batch_update('ghost')
  assert np.std(np.concatenate([n.ravel() for n in noise])) > 0.5 / EXPECTED
  for engine in ('vectorized', 'jacobian'):
    assert_grads_close(empty_batch_update(engine), noise, atol=1e-6)


def test_ghost_falls_back_where_layer_capture_does_not_apply(critic):
  choose = dp_gradients._choose_engine  # pylint: disable=protected-access
  assert choose('ghost', critic, False)[0] == 'ghost'
  assert choose('ghost', critic, True)[0] == 'vectorized'
  generator = networks.build_generator(IMAGE_SHAPE, NUM_CLASSES, width=4)
  assert dp_gradients.capturable_layers(generator) is None
  assert choose('ghost', generator, False)[0] == 'vectorized'
  assert choose('jacobian', critic, True)[0] == 'jacobian'


def test_ghost_clips_a_layer_norm_critic_like_the_loop():
  """--critic_norm=layer adds no parameters: ghost clipping still applies,
  and its norms and clipped mean equal the one-record-at-a-time loop's."""
  tf.keras.utils.set_random_seed(2)
  critic = networks.build_critic(IMAGE_SHAPE, NUM_CLASSES, width=4,
                                 norm='layer')
  assert dp_gradients._choose_engine(  # pylint: disable=protected-access
      'ghost', critic, False)[0] == 'ghost'
  records = make_records(BATCH)
  per_record = per_record_gradients(critic, records)
  norms_loop = [global_norm(g) for g in per_record]
  clip = float(np.median(norms_loop))
  expected = [sum(min(1.0, clip / n) * g for n, g in zip(norms_loop, parts))
              / EXPECTED for parts in zip(*per_record)]
  grads, norms = private_gradients('ghost', critic, records, clip=clip)
  np.testing.assert_allclose(norms, norms_loop, rtol=1e-5)
  assert_grads_close(grads, expected)


def test_unknown_engine_is_rejected(critic):
  with pytest.raises(ValueError, match='grad_engine'):
    private_gradients('loop', critic, make_records(2))


@pytest.mark.parametrize('engine', ['ghost', 'vectorized'])
def test_public_records_are_clipped_like_the_query_and_not_noised(critic,
                                                                   engine):
  """Public records (gan.py's public fakes): clipped at C, never noised, even
  by an optimizer whose query noises; added to the private records' noised
  mean."""
  records = make_records(BATCH)
  fake_terms = lambda r: losses.fake_terms('hinge',
                                           critic([r[1], r[2]], training=True))
  expected = [tf.zeros_like(v) for v in critic.trainable_variables]
  for i in range(BATCH):
    with tf.GradientTape() as tape:
      value = tf.reduce_sum(fake_terms(tf.nest.map_structure(
          lambda t, i=i: t[i:i + 1], records)))
    grads = tape.gradient(value, critic.trainable_variables)
    scale = min(1.0, 0.5 / global_norm(grads))
    expected = [e + scale * g / 2 / EXPECTED for e, g in zip(expected, grads)]
  private = make_records(3, seed=1)
  noised_alone = optimizer_gradients(
      make_optimizer(0.5, 5.0, seed=(1, 2), engine=engine),
      private_loss(critic, private))
  with_public = optimizer_gradients(
      make_optimizer(0.5, 5.0, seed=(1, 2), engine=engine),
      private_loss(critic, private, public_loss_fn=fake_terms,
                   public_records=records,
                   expected_public_records=2 * EXPECTED))
  assert_grads_close([(w - n).numpy() for w, n in zip(with_public,
                                                      noised_alone)],
                     [e.numpy() for e in expected], atol=1e-5)


def test_clipping_outside_the_optimizer_refuses_the_jacobian_engine(critic):
  with pytest.raises(ValueError, match='--grad_engine=.jacobian.'):
    dp_gradients.clipped_sums('jacobian', 1.0, None, critic,
                              make_records(2), 1)


def test_critic_update_is_the_optimizers_minimize_and_its_own_gradients(
    critic, monkeypatch):
  """minimize() with a PrivateLoss goes through the DP optimizer's own
  _compute_gradients, which marks the DP gradients as computed: no caller
  sets the parent's flag, and apply_gradients alone still fails its assert."""
  calls = []
  original = privacy.DPCriticAdamOptimizer._compute_gradients  # pylint: disable=protected-access

  def counting(self, loss, var_list, grad_loss=None, tape=None):
    calls.append(type(loss))
    return original(self, loss, var_list, grad_loss, tape)

  monkeypatch.setattr(privacy.DPCriticAdamOptimizer, '_compute_gradients',
                      counting)
  variables = critic.trainable_variables
  before = [v.numpy() for v in variables]
  optimizer = make_optimizer(1.0, 1.0, engine='ghost')
  optimizer.learning_rate = 1e-3
  assert not optimizer._was_dp_gradients_called  # pylint: disable=protected-access
  with pytest.raises(AssertionError, match='not differentially private'):
    optimizer.apply_gradients(zip([tf.zeros_like(v) for v in variables],
                                  variables))
  optimizer.minimize(private_loss(critic, make_records(BATCH)), variables)
  assert calls == [dp_gradients.PrivateLoss]
  assert any(np.any(v.numpy() != b) for v, b in zip(variables, before))
  for v, b in zip(variables, before):
    v.assign(b)


def bfloat16_critic_and_float32_twin():
  """A bfloat16 critic with large weights (large activations), rounded to
  bfloat16 values, and a float32 critic with the same weights."""
  tf.keras.utils.set_random_seed(3)
  with networks.compute_dtype('bfloat16'):
    critic = networks.build_critic(IMAGE_SHAPE, NUM_CLASSES, width=4)
  for v in critic.trainable_variables:
    v.assign(tf.cast(tf.cast(8.0 * v, tf.bfloat16), tf.float32))
  twin = networks.build_critic(IMAGE_SHAPE, NUM_CLASSES, width=4)
  twin.set_weights(critic.get_weights())
  return critic, twin


def near_tied_records():
  """Two near copies of each of 4 records, in bfloat16 values, at the ends
  of [-1, 1] where the inputs are largest."""
  real, fake, labels, interpolation = make_records(4, seed=5)
  rng = np.random.default_rng(6)
  copies = lambda t: tf.concat([t, t + 1e-2 * rng.standard_normal(t.shape)],
                               0)
  to_bf16 = lambda t: tf.cast(tf.cast(tf.sign(t) * tf.sqrt(tf.abs(t)),
                                      tf.bfloat16), tf.float32)
  return (to_bf16(copies(real)), to_bf16(copies(fake)),
          tf.concat([labels, labels], 0),
          tf.concat([interpolation, interpolation], 0))


def test_bfloat16_clipping_bounds_every_records_contribution_by_c():
  """--compute_dtype=bfloat16: every record adds at most C to the float32
  sum, measured against references that share no code with the engine.

  Norms measured from bfloat16 activations may be slightly too small, which
  the engine's clip at C / (1 + eta) absorbs. Each record's gradient, by
  the bfloat16 critic's own tape and by a float32 tape on the same
  bfloat16-rounded weights and inputs, scaled by the engine's clip factor,
  has norm <= C, and so does the engine's sum for the record alone. C is
  the median norm, so the near-tied copies fall on both sides of it; at
  C itself, clipped at C alone, a reference norm above the measured one
  would exceed C.
  """
  critic, twin = bfloat16_critic_and_float32_twin()
  records = near_tied_records()
  _, norms = private_gradients('ghost', critic, records, clip=1e9)
  clip = float(np.median(norms))
  applied = clip / (1.0 + dp_gradients.BFLOAT16_NORM_ERROR)
  factors = applied / np.maximum(norms, applied)
  for reference in (critic, twin):
    true_norms = np.array([global_norm(g) for g in
                           per_record_gradients(reference, records)])
    # Rounding is there, and eta bounds it (a saturated hinge gives 0).
    measured = norms > 0
    errors = np.abs(true_norms[measured] / norms[measured] - 1)
    assert 0 < np.max(errors) <= dp_gradients.BFLOAT16_NORM_ERROR
    assert np.all(factors * true_norms <= clip)
  for i in range(len(norms)):
    alone = tf.nest.map_structure(lambda t, i=i: t[i:i + 1], records)
    contribution, _ = private_gradients('ghost', critic, alone, clip=clip,
                                        expected=1.0)
    assert global_norm(contribution) <= clip * (1 + 1e-6)
