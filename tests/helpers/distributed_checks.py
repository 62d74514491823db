"""Mirrored (two replicas) against single-device private training; JSON out.

Usage: python tests/helpers/two_cpus.py tests/helpers/distributed_checks.py ENGINE OUT.json

The same models, from the same weights and seed, are fitted through Keras on
the same global batches: without noise on one device and on two replicas,
then with noise on two replicas. Batch sizes are odd, one is smaller than the
replica count (a replica gets no example) and the last is empty, so the last
critic gradient is the noise alone. The non-private diagnostics are on, so
the critic also scores each replica's (possibly empty) real batch.

Both optimizers are Adam with epsilon = 1, so that an update is a smooth
function of the gradient (with the usual 1e-7, a gradient near zero turns a
rounding difference between summation orders into a large step). The critic
optimizer has beta_1 = 0: its first-moment slot then holds the last gradient
it applied.
"""

import json
import sys

import numpy as np
import tensorflow as tf

from dpgan_tf import gan
from dpgan_tf import networks
from dpgan_tf import privacy

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
LATENT_DIM = 8
DATASET_SIZE = 64
EXPECTED_BATCH = 8
CLIP = 1.0
NOISE_MULTIPLIER = 1.0
DELTA = 1e-5
BATCH_SIZES = (7, 1, 4, 3, 0)


def dataset() -> tf.data.Dataset:
  """Elements like CriticBatchSampler.dataset's with n_critic=1."""

  def elements():
    rng = np.random.default_rng(0)
    for n in BATCH_SIZES:
      images = rng.integers(0, 256, (n,) + IMAGE_SHAPE, dtype=np.uint8)
      labels = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
      yield ((images, labels),)

  spec = (tf.TensorSpec((None,) + IMAGE_SHAPE, tf.uint8),
          tf.TensorSpec((None,), tf.int32))
  return tf.data.Dataset.from_generator(elements, output_signature=(spec,))


def fit(strategy, engine, noise_multiplier, weights):
  """A model fitted on BATCH_SIZES; weights = (generator's, critic's)."""
  # Outside the strategy, as training.py creates it.
  ledger = privacy.PrivacyLedger(
      noise_multiplier, EXPECTED_BATCH / DATASET_SIZE, DELTA, DATASET_SIZE, 1,
      CLIP, 'poisson', 'synthetic')
  with strategy.scope():
    generator = networks.build_generator(IMAGE_SHAPE, NUM_CLASSES, LATENT_DIM,
                                         width=8)
    critic = networks.build_critic(IMAGE_SHAPE, NUM_CLASSES, width=8)
    generator.set_weights(weights[0])
    critic.set_weights(weights[1])
    # wasserstein with weight clipping also exercises the clip's update path.
    model = gan.ConditionalDPGAN(
        generator, critic, ledger, gan.GANOptions(
            num_classes=NUM_CLASSES, latent_dim=LATENT_DIM, loss='wasserstein',
            critic_weight_clip=0.05, expected_batch_size=EXPECTED_BATCH,
            nonprivate_diagnostics=True), seed=7)
    model.compile(
        critic_optimizer=privacy.DPCriticAdamOptimizer(
            CLIP, noise_multiplier, None, model.noise_seed, engine,
            chunk_size=4, learning_rate=1e-2, beta_1=0.0, epsilon=1.0),
        generator_optimizer=tf.keras.optimizers.legacy.Adam(1e-2, epsilon=1.0))
  model.fit(dataset(), epochs=1, steps_per_epoch=len(BATCH_SIZES), verbose=0)
  return model


def components(strategy, variable):
  return [v.numpy() for v in strategy.experimental_local_results(variable)]


def max_difference(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(
      a.generator.get_weights() + a.critic.get_weights(),
      b.generator.get_weights() + b.critic.get_weights()))


def last_critic_gradients(model, strategy):
  """Per replica, the critic's last applied gradient (flat), from slot m."""
  slots = [components(strategy, model.critic_optimizer.get_slot(v, 'm'))
           for v in model.critic.trainable_variables]
  return [np.concatenate([s[r].ravel() for s in slots])
          for r in range(len(slots[0]))]


def main():
  engine, out = sys.argv[1:]
  single = tf.distribute.get_strategy()
  mirrored = tf.distribute.MirroredStrategy(
      [d.name for d in tf.config.list_logical_devices('CPU')])
  tf.keras.utils.set_random_seed(0)
  init = (networks.build_generator(IMAGE_SHAPE, NUM_CLASSES, LATENT_DIM,
                                   width=8).get_weights(),
          networks.build_critic(IMAGE_SHAPE, NUM_CLASSES, width=8)
          .get_weights())
  clean = [fit(s, engine, 0.0, init) for s in (single, mirrored)]
  noisy = fit(mirrored, engine, NOISE_MULTIPLIER, init)

  noise = last_critic_gradients(noisy, mirrored)
  # What one device adds at that step: the query's noise for the same seed.
  optimizer = noisy.critic_optimizer
  one_device, _, _ = optimizer._dp_sum_query.get_noised_result(  # pylint: disable=protected-access
      [tf.zeros(v.shape) for v in noisy.critic.trainable_variables],
      optimizer._global_state)  # pylint: disable=protected-access
  one_device = np.concatenate([g.numpy().ravel() for g in one_device])
  steps = [int(m.ledger.critic_steps.numpy()) for m in clean + [noisy]]
  results = {
      'replicas': mirrored.num_replicas_in_sync,
      'critic_steps': steps,
      'generator_steps': [int(m.generator_steps.numpy())
                          for m in clean + [noisy]],
      'max_weight_difference': max_difference(*clean),
      'max_replica_difference': max(
          float(np.max(np.abs(c[0] - c[1])))
          for m in clean[1:] + [noisy]
          for v in m.critic.variables + m.generator.variables
          for c in [components(mirrored, v)]),
      'single_device_epsilon': privacy.compute_epsilon(
          NOISE_MULTIPLIER, EXPECTED_BATCH / DATASET_SIZE, steps[0], DELTA),
      'mirrored_epsilon': noisy.ledger.epsilon(),
      'expected_noise_std': NOISE_MULTIPLIER * CLIP / EXPECTED_BATCH,
      'noise_std': float(np.std(noise[0])),
      'noise_mean': float(np.mean(noise[0])),
      'noise_size': int(noise[0].size),
      'noise_replica_difference': float(np.max(np.abs(noise[0] - noise[1]))),
      'single_device_noise_difference': float(np.max(np.abs(
          noise[0] - one_device / EXPECTED_BATCH))),
  }
  with open(out, 'w') as f:
    json.dump(results, f, indent=2)


if __name__ == '__main__':
  main()
