"""ConditionalDPGAN pieces that need no data: the generator's moving average."""

import numpy as np
import pytest
import tensorflow as tf

from dpgan_tf import gan
from dpgan_tf import networks
from dpgan_tf import privacy


@pytest.mark.parametrize('step,decay,expected_decay', [
    (0, 0.99, 0.1),          # warm-up: (1 + 0) / (10 + 0)
    (8, 0.99, 0.5),          # warm-up: 9 / 18
    (5000, 0.99, 0.99),      # the configured decay once warmed up
    (5000, 0.5, 0.5),
])
def test_generator_ema_update_matches_numpy(step, decay, expected_decay):
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
  model.generator_steps.assign(step)
  model.update_generator_ema()
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
