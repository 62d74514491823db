"""ConditionalDPGAN pieces that need no data: the generator's moving average,
the update counts of a train step."""

import numpy as np
import pytest
import tensorflow as tf

from dpgan_tf import config as config_lib
from dpgan_tf import gan
from dpgan_tf import networks
from dpgan_tf import privacy
from dpgan_tf import training


@pytest.mark.parametrize('updates,decay,expected_decay', [
    (0, 0.99, 0.1),          # warm-up: (1 + 0) / (10 + 0)
    (8, 0.99, 0.5),          # warm-up: 9 / 18
    (5000, 0.99, 0.99),      # the configured decay once warmed up
    (5000, 0.5, 0.5),
])
def test_generator_ema_update_matches_numpy(updates, decay, expected_decay):
  shape, classes = (28, 28, 1), 10
  generator = networks.build_generator(shape, classes, latent_dim=4, width=4)
  average = networks.build_generator(shape, classes, latent_dim=4, width=4)
  model = gan.ConditionalDPGAN(
      generator, networks.build_critic(shape, classes, width=4),
      privacy.PrivacyLedger(), num_classes=classes, latent_dim=4,
      ema_generator=average, ema_decay=decay)
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
  shape, classes = (28, 28, 1), 10
  generator = networks.build_generator(shape, classes, latent_dim=4, width=4)
  model = gan.ConditionalDPGAN(
      generator, networks.build_critic(shape, classes, width=4),
      privacy.PrivacyLedger(), num_classes=classes, latent_dim=4)
  assert model.sampling_generator is generator


@pytest.mark.parametrize('n_generator', [1, 3])
def test_n_generator_updates_are_free_of_privacy_cost(n_generator):
  """A generator step makes n_critic privacy steps, n_generator updates."""
  shape, classes = (28, 28, 1), 10
  generator = networks.build_generator(shape, classes, latent_dim=4, width=4)
  average = networks.build_generator(shape, classes, latent_dim=4, width=4)
  average.set_weights(generator.get_weights())
  model = gan.ConditionalDPGAN(
      generator, networks.build_critic(shape, classes, width=4),
      privacy.PrivacyLedger(), num_classes=classes, latent_dim=4,
      n_critic=2, n_generator=n_generator, expected_batch_size=8,
      ema_generator=average, ema_decay=0.5)
  model.compile(*training.make_optimizers(
      config_lib.TrainConfig(), 1.0, model.noise_seed))
  images = tf.zeros([8, 28, 28, 1], tf.uint8)
  labels = tf.range(8, dtype=tf.int32)
  for _ in range(2):
    metrics = model.train_step(((images, labels), (images, labels)))
  assert int(model.ledger.critic_steps.numpy()) == 4
  assert int(model.d_optimizer.iterations.numpy()) == 4
  assert int(model.g_optimizer.iterations.numpy()) == 2 * n_generator
  assert int(model.generator_steps.numpy()) == 2
  assert np.isfinite(metrics['generator_loss'].numpy())
  # The average moved with the last update: (1 - 0.5) of the way.
  assert not np.array_equal(average.get_weights()[0],
                            generator.get_weights()[0])
