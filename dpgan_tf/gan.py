"""The conditional DPGAN as a Keras model with a custom `train_step`.

One `train_step` is `n_critic` private critic updates, each on its own real
batch, then one generator update that reads no real data. Every critic update
is one step of the subsampled Gaussian mechanism and is counted in the
ledger in the same graph that applies it, so the count can never drift from
the updates actually made.

All randomness is stateless and keyed by (seed, stream, step counter): a run
resumed from a checkpoint continues with exactly the noise an uninterrupted
run would have drawn, and no noise is ever reused.

Metrics: by default only quantities covered by the guarantee or computed
without real data (generator loss, the critic's loss on fakes, epsilon).
Anything else read from real data (critic loss on the real batch, the
Wasserstein estimate, clipping statistics, the realised batch size) is a
non-private diagnostic, computed only when asked for and named `nonprivate_*`.
"""

import tensorflow as tf

from dpgan_tf import data as data_lib
from dpgan_tf import dp_gradients
from dpgan_tf import losses

keras = tf.keras

# RNG streams, folded into the run seed.
_FAKE_NOISE, _INTERPOLATION, _DP_NOISE, _GEN_NOISE, _GEN_LABELS = range(5)


class ConditionalDPGAN(keras.Model):
  """Generator + critic trained with a DP critic optimizer."""

  def __init__(self, generator, critic, ledger, *, num_classes, latent_dim,
               loss='hinge', n_critic=1, gp_weight=10.0,
               critic_weight_clip=0.0, grad_engine='ghost',
               microbatch_size=1, expected_batch_size=64, seed=0,
               chunk_size=128, nonprivate_diagnostics=False, **kwargs):
    super().__init__(**kwargs)
    self.generator = generator
    self.critic = critic
    self.ledger = ledger
    self.num_classes = num_classes
    self.latent_dim = latent_dim
    self.loss_type = loss
    self.n_critic = n_critic
    self.gp_weight = gp_weight
    self.critic_weight_clip = critic_weight_clip
    self.grad_engine = grad_engine
    self.microbatch_size = microbatch_size
    self.expected_batch_size = expected_batch_size
    self.chunk_size = chunk_size
    self.nonprivate_diagnostics = nonprivate_diagnostics
    # Counters are written identically by every replica.
    same = tf.VariableAggregation.ONLY_FIRST_REPLICA
    self.seed = tf.Variable(seed, dtype=tf.int64, trainable=False)
    self.generator_steps = tf.Variable(0, dtype=tf.int64, trainable=False,
                                       aggregation=same)
    # Read by the DP optimizer's query; set before every critic update.
    self.noise_seed = tf.Variable([0, 0], dtype=tf.int64, trainable=False,
                                  aggregation=same)

  def compile(self, d_optimizer, g_optimizer, **kwargs):
    super().compile(**kwargs)
    self.d_optimizer = d_optimizer
    self.g_optimizer = g_optimizer

  def call(self, inputs, training=False):
    """Generates images from (noise, labels)."""
    return self.generator(inputs, training=training)

  def _key(self, stream, counter):
    base = tf.stack([self.seed, tf.constant(stream, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, counter)

  def _replica(self):
    ctx = tf.distribute.get_replica_context()
    return ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync

  def critic_records(self, images, labels, critic_step):
    """Real examples paired with fakes of their class: one record each."""
    real = data_lib.to_model_range(images)
    n = tf.shape(labels)[0]
    replica_id, _ = self._replica()
    key = lambda s: self._key(s, critic_step * 1024 + tf.cast(replica_id,
                                                             tf.int64))
    noise = tf.random.stateless_normal([n, self.latent_dim], key(_FAKE_NOISE))
    fake = tf.stop_gradient(self.generator([noise, labels], training=True))
    interpolation = tf.random.stateless_uniform([n], key(_INTERPOLATION))
    return real, fake, labels, interpolation

  def record_losses(self, records):
    real, fake, labels, interpolation = records
    return losses.critic_losses(self.loss_type, self.critic, real, fake,
                                labels, interpolation, self.gp_weight)

  def critic_step(self, images, labels):
    """One private critic update on one real batch; returns its metrics."""
    step = self.ledger.critic_steps
    records = self.critic_records(images, labels, step)
    self.noise_seed.assign(self._key(_DP_NOISE, step))
    variables = self.critic.trainable_variables
    grads, norms = dp_gradients.dp_gradients(
        self.grad_engine, self.d_optimizer, self.record_losses, self.critic,
        records, self.microbatch_size,
        self.expected_batch_size / self.microbatch_size, self.chunk_size,
        loss_differentiates_inputs=self.loss_type == 'wgan_gp')
    self.d_optimizer.apply_gradients(zip(grads, variables),
                                     experimental_aggregate_gradients=False)
    if self.critic_weight_clip > 0:
      for v in variables:
        v.assign(tf.clip_by_value(v, -self.critic_weight_clip,
                                  self.critic_weight_clip))
    self.ledger.critic_steps.assign_add(1)

    real, fake, labels, _ = records
    fake_scores = self.critic([fake, labels], training=False)
    metrics = {'critic_loss_fake': self._fake_term(fake_scores)}
    if self.nonprivate_diagnostics:
      real_scores = self.critic([real, labels], training=False)
      metrics.update({
          'nonprivate_critic_loss': tf.reduce_mean(self.record_losses(records)),
          'nonprivate_wasserstein_estimate': (tf.reduce_mean(real_scores) -
                                              tf.reduce_mean(fake_scores)),
          'nonprivate_batch_size': tf.cast(tf.shape(labels)[0], tf.float32),
      })
      if self.grad_engine != 'jacobian':
        clip = self.d_optimizer._dp_sum_query._l2_norm_clip  # pylint: disable=protected-access
        metrics['nonprivate_clipped_fraction'] = tf.reduce_mean(
            tf.cast(norms > clip, tf.float32))
        metrics['nonprivate_mean_grad_norm'] = tf.reduce_mean(norms)
    return metrics

  def _fake_term(self, fake_scores):
    """The critic loss's fake-data term: computed without real data."""
    if self.loss_type == 'hinge':
      return tf.reduce_mean(tf.nn.relu(1.0 + fake_scores))
    return tf.reduce_mean(fake_scores)

  def generator_step(self):
    """One generator update on uniformly drawn classes (no real data)."""
    replica_id, replicas = self._replica()
    size = max(1, self.expected_batch_size // replicas)
    counter = self.generator_steps * 1024 + tf.cast(replica_id, tf.int64)
    labels = tf.random.stateless_uniform([size], self._key(_GEN_LABELS,
                                                           counter),
                                         0, self.num_classes, tf.int32)
    noise = tf.random.stateless_normal([size, self.latent_dim],
                                       self._key(_GEN_NOISE, counter))
    with tf.GradientTape() as tape:
      fake = self.generator([noise, labels], training=True)
      loss = losses.generator_loss(self.critic([fake, labels], training=False))
      scaled = loss / replicas
    grads = tape.gradient(scaled, self.generator.trainable_variables)
    self.g_optimizer.apply_gradients(zip(grads,
                                         self.generator.trainable_variables))
    self.generator_steps.assign_add(1)
    return loss

  def train_step(self, data):
    """`data`: a tuple of n_critic (uint8 images, int32 labels) batches."""
    per_step = [self.critic_step(images, labels) for images, labels in data]
    metrics = {k: tf.add_n([m[k] for m in per_step]) / len(per_step)
               for k in per_step[0]}
    metrics['generator_loss'] = self.generator_step()
    return metrics
