"""ConditionalDPGAN pieces that need no data: the generator's moving average,
the update counts of a train step."""

import numpy as np
import pytest
import tensorflow as tf

from dpgan_tf import config as config_lib
from dpgan_tf import data as data_lib
from dpgan_tf import gan
from dpgan_tf import networks
from dpgan_tf import privacy
from dpgan_tf import training

SHAPE, CLASSES = (28, 28, 1), 10


def build_generator():
  return networks.build_generator(SHAPE, CLASSES, latent_dim=4, width=4)


def make_model(generator=None, ema_generator=None, seed=0, **options):
  """A ConditionalDPGAN of width-4 networks and a 4-dimensional latent."""
  return gan.ConditionalDPGAN(
      generator or build_generator(),
      networks.build_critic(SHAPE, CLASSES, width=4), privacy.PrivacyLedger(),
      gan.GANOptions(num_classes=CLASSES, latent_dim=4, **options), seed=seed,
      ema_generator=ema_generator)


@pytest.mark.parametrize('updates,decay,expected_decay', [
    (0, 0.99, 0.1),          # warm-up: (1 + 0) / (10 + 0)
    (8, 0.99, 0.5),          # warm-up: 9 / 18
    (5000, 0.99, 0.99),      # the configured decay once warmed up
    (5000, 0.5, 0.5),
])
def test_generator_ema_update_matches_numpy(updates, decay, expected_decay):
  generator, average = build_generator(), build_generator()
  model = make_model(generator, average, ema_decay=decay)
  assert model.sampling_generator is average
  before = average.get_weights()
  weights = generator.get_weights()
  assert not all(np.array_equal(a, w) for a, w in zip(before, weights))
  model.update_generator_ema(updates)
  for got, a, w in zip(average.get_weights(), before, weights):
    np.testing.assert_allclose(
        got, expected_decay * a + (1 - expected_decay) * w, rtol=1e-5,
        atol=1e-7)
  np.testing.assert_array_equal(generator.get_weights()[0], weights[0])


def test_without_moving_average_the_last_iterate_is_sampled():
  generator = build_generator()
  assert make_model(generator).sampling_generator is generator


@pytest.mark.parametrize('n_generator', [1, 3])
def test_n_generator_updates_are_free_of_privacy_cost(n_generator):
  """A generator step makes n_critic privacy steps, n_generator updates."""
  generator, average = build_generator(), build_generator()
  average.set_weights(generator.get_weights())
  model = make_model(generator, average, n_critic=2, n_generator=n_generator,
                     expected_batch_size=8, ema_decay=0.5)
  model.compile(*training.make_optimizers(
      config_lib.TrainConfig(), 1.0, model.noise_seed))
  images = tf.zeros([8, 28, 28, 1], tf.uint8)
  labels = tf.range(8, dtype=tf.int32)
  for _ in range(2):
    metrics = model.train_step(((images, labels), (images, labels)))
  assert int(model.ledger.critic_steps.numpy()) == 4
  assert int(model.critic_optimizer.iterations.numpy()) == 4
  assert int(model.generator_optimizer.iterations.numpy()) == 2 * n_generator
  assert int(model.generator_steps.numpy()) == 2
  assert np.isfinite(metrics['generator_loss'].numpy())
  # The average moved with the last update: (1 - 0.5) of the way.
  assert not np.array_equal(average.get_weights()[0],
                            generator.get_weights()[0])


def _critic_update(fake_gradient, images, labels, sigma=0.0, batch=8):
  """The critic gradient one critic_step applies (captured, not applied),
  and the model, always at critic step 0 with the same weights."""
  tf.keras.utils.set_random_seed(2)
  model = make_model(seed=5, expected_batch_size=batch,
                     fake_gradient=fake_gradient)
  model.compile(*training.make_optimizers(
      config_lib.TrainConfig(l2_norm_clip=0.5), sigma, model.noise_seed))
  applied = []
  model.critic_optimizer.apply_gradients = (
      lambda pairs, **_: applied.append([g.numpy() for g, _ in pairs]))
  model.critic_step(images, labels)
  return applied[0], model


def _clipped_sum(model, loss_fn, inputs, clip=0.5):
  """Sum over examples of their clipped gradients, one example at a time."""
  variables = model.critic.trainable_variables
  total = [np.zeros(v.shape, np.float32) for v in variables]
  for image, label in zip(*inputs):
    with tf.GradientTape() as tape:
      value = tf.reduce_sum(loss_fn(model.critic(
          [image[None], label[None]], training=True)))
    grads = tape.gradient(value, variables)
    scale = min(1.0, clip / float(tf.linalg.global_norm(grads)))
    total = [t + scale * g.numpy() for t, g in zip(total, grads)]
  return total


def _real_batch(n, seed=0):
  rng = np.random.default_rng(seed)
  return (tf.constant(rng.integers(0, 256, (n, 28, 28, 1)), tf.uint8),
          tf.constant(rng.integers(0, 10, n), tf.int32))


def test_public_fake_gradient_is_noised_real_mean_plus_clipped_fake_mean():
  """With sigma = 0 the update is sum_i clip(grad real_i) / B (the private
  part) + sum_j clip(grad fake_j) / B over B public fakes of uniformly drawn
  classes, each clipped on its own."""
  images, labels = _real_batch(5)
  update, model = _critic_update('public', images, labels)
  fakes = model.public_fakes(tf.constant(0, tf.int64))
  assert fakes['fake'].shape == (8, 28, 28, 1)
  real = data_lib.to_model_range(images)
  expected = [
      (r + f) / 8 for r, f in zip(
          _clipped_sum(model, lambda s: tf.nn.relu(1.0 - s), (real, labels)),
          _clipped_sum(model, lambda s: tf.nn.relu(1.0 + s),
                       (fakes['fake'], fakes['labels'])))]
  for got, want in zip(update, expected):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('fake_gradient', config_lib.FAKE_GRADIENTS)
def test_one_real_example_moves_the_update_by_at_most_clip_over_b(
    fake_gradient):
  """The sensitivity the accountant assumes, for both ways of taking the
  fakes: removing one real example (here the last) moves the unnoised
  update by at most C / B. With public fakes the rest of the update,
  fakes included, is untouched."""
  images, labels = _real_batch(6)
  full, _ = _critic_update(fake_gradient, images, labels)
  fewer, _ = _critic_update(fake_gradient, images[:5], labels[:5])
  change = np.sqrt(sum(np.sum((a - b)**2) for a, b in zip(full, fewer)))
  assert 0 < change <= 0.5 / 8 + 1e-6


def test_public_fakes_alone_drive_the_update_of_an_empty_batch():
  images, labels = _real_batch(0)
  update, model = _critic_update('public', images, labels)
  fakes = model.public_fakes(tf.constant(0, tf.int64))
  expected = _clipped_sum(model, lambda s: tf.nn.relu(1.0 + s),
                          (fakes['fake'], fakes['labels']))
  for got, want in zip(update, expected):
    np.testing.assert_allclose(got, want / 8, rtol=1e-4, atol=1e-6)


def test_unknown_fake_gradient_is_rejected():
  with pytest.raises(ValueError, match="--fake_gradient='mixed'"):
    gan.GANOptions(num_classes=CLASSES, latent_dim=4, fake_gradient='mixed')
