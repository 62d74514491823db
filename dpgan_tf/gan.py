"""The conditional DPGAN as a Keras model with a custom `train_step`.

One `train_step` (a generator step) is `n_critic` private critic updates,
each on its own real batch, then `n_generator` generator updates that read no
real data, so they cost no privacy, only compute. Every critic update is one
step of the subsampled Gaussian mechanism and is counted in the ledger in the
same graph that applies it, so the count can never drift from the updates
actually made.

The critic loss has a term on real examples and a term on fakes. With
`fake_gradient='paired'` (DPGAN's way) each real example is paired with a
fake of its class and the pair is one clipped, noised record. With
`'public'` the fakes are drawn apart: a fixed number (the expected batch
size), of uniformly drawn classes, from the current generator. Nothing about
them depends on private data beyond what earlier noised updates released, so
their gradient is post-processing: it is clipped per fake at the same C (to
keep the two halves on one scale) but not noised, and added to the noised
mean of the real examples' clipped gradients. The privacy analysis is
unchanged (one real example still moves the clipped sum by at most C), and
the real term gets the whole clip norm instead of sharing it with its fake.

All randomness is stateless and keyed by (seed, stream, step counter): a run
resumed from a checkpoint continues with exactly the noise an uninterrupted
run would have drawn, and no noise is ever reused.

Metrics: by default only quantities covered by the guarantee or computed
without real data (generator loss, the critic's loss on fakes, epsilon).
Anything else read from real data (critic loss on the real batch, the
Wasserstein estimate, clipping statistics, the realised batch size) is a
non-private diagnostic, computed only when asked for and named `nonprivate_*`.

With `ema_generator`, an exponential moving average of the generator's
weights is updated after every generator update; it is what
`sampling_generator` returns, so samples, TensorBoard images and the export
come from the average. Averaging the iterates smooths out the oscillation
that the critic's DP noise causes. It reads only generator weights, so it is
post-processing.

Under tf.distribute each replica gets a slice of every global batch. The
randomness of a step (fakes, interpolation points, the generator's batch) is
drawn for the global batch and sliced, so an update does not depend on how
the batch is split: with the same seed, a run on several devices makes the
updates of a single-device run. Metrics are global means, identical on every
replica, so Keras reports the first replica's.
"""

import tensorflow as tf

from dpgan_tf import data as data_lib
from dpgan_tf import dp_gradients
from dpgan_tf import losses

keras = tf.keras

# RNG streams, folded into the run seed.
(_FAKE_NOISE, _INTERPOLATION, _DP_NOISE, _GEN_NOISE, _GEN_LABELS,
 _FAKE_LABELS) = range(6)
# The warm start's streams (warm_start.py), apart from the ones above.
WARM_START_FREQUENCIES, WARM_START_RELEASE, WARM_START_NOISE = range(100, 103)

FAKE_GRADIENTS = ('paired', 'public')


def rng_key(seed, stream: int, counter):
  """The stateless RNG key of draw `counter` of `stream` in the run `seed`:
  every draw of a run has its own, and a resumed run draws what the
  uninterrupted run would have."""
  base = tf.stack([tf.cast(seed, tf.int64), tf.constant(stream, tf.int64)])
  return tf.random.experimental.stateless_fold_in(base, counter)


class ConditionalDPGAN(keras.Model):
  """Generator + critic trained with a DP critic optimizer."""

  def __init__(self, generator, critic, ledger, *, num_classes, latent_dim,
               loss='hinge', n_critic=1, n_generator=1, gp_weight=10.0,
               critic_weight_clip=0.0, grad_engine='ghost',
               microbatch_size=1, expected_batch_size=64, seed=0,
               chunk_size=128, nonprivate_diagnostics=False,
               ema_generator=None, ema_decay=0.0, fake_gradient='paired',
               **kwargs):
    super().__init__(**kwargs)
    # Every replica returns the global metrics (see module doc); Keras's
    # default would sum them over replicas.
    self.distribute_reduction_method = 'first'
    self.generator = generator
    self.critic = critic
    self.ledger = ledger
    self.num_classes = num_classes
    self.latent_dim = latent_dim
    self.loss_type = loss
    self.n_critic = n_critic
    self.n_generator = n_generator
    self.gp_weight = gp_weight
    self.critic_weight_clip = critic_weight_clip
    self.grad_engine = grad_engine
    self.microbatch_size = microbatch_size
    self.expected_batch_size = expected_batch_size
    self.chunk_size = chunk_size
    self.nonprivate_diagnostics = nonprivate_diagnostics
    self.ema_generator = ema_generator
    self.ema_decay = ema_decay
    if fake_gradient not in FAKE_GRADIENTS:
      raise ValueError(f'--fake_gradient={fake_gradient!r}: choose one of '
                       f'{FAKE_GRADIENTS}.')
    self.fake_gradient = fake_gradient
    # Counters are written identically by every replica.
    same = tf.VariableAggregation.ONLY_FIRST_REPLICA
    self.seed = tf.Variable(seed, dtype=tf.int64, trainable=False)
    # Generator steps (train steps) taken, of n_generator updates each.
    self.generator_steps = tf.Variable(0, dtype=tf.int64, trainable=False,
                                       aggregation=same)
    # Read by the DP optimizer's query; set before every critic update.
    self.noise_seed = tf.Variable([0, 0], dtype=tf.int64, trainable=False,
                                  aggregation=same)

  def compile(self, d_optimizer, g_optimizer, **kwargs):
    super().compile(**kwargs)
    self.d_optimizer = d_optimizer
    self.g_optimizer = g_optimizer

  @property
  def sampling_generator(self) -> keras.Model:
    """The generator to sample and export: the EMA one if kept."""
    if self.ema_generator is None:
      return self.generator
    return self.ema_generator

  def call(self, inputs, training=False):
    """Generates images from (noise, labels)."""
    return self.generator(inputs, training=training)

  def _key(self, stream, counter):
    return rng_key(self.seed, stream, counter)

  def _replica(self):
    ctx = tf.distribute.get_replica_context()
    return ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync

  def _sum_over_replicas(self, value):
    ctx = tf.distribute.get_replica_context()
    if ctx.num_replicas_in_sync == 1:
      return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)

  def _global_mean(self, values):
    """Mean of per-record values over the global batch; 0 if it is empty."""
    total = self._sum_over_replicas(tf.stack([
        tf.reduce_sum(values), tf.cast(tf.size(values), tf.float32)]))
    return tf.math.divide_no_nan(total[0], total[1])

  def _global_rows(self, n):
    """(offset of this replica's n records in the global batch, its size)."""
    replica_id, replicas = self._replica()
    if replicas == 1:
      return 0, n
    sizes = tf.distribute.get_replica_context().all_gather(
        tf.reshape(n, [1]), axis=0)
    return tf.reduce_sum(sizes[:replica_id]), tf.reduce_sum(sizes)

  def critic_records(self, images, labels, critic_step):
    """The private records: each real example, with (paired) a fake of its
    class and the gradient penalty's interpolation point."""
    records = {'real': data_lib.to_model_range(images), 'labels': labels}
    if self.fake_gradient == 'public':
      return records
    n = tf.shape(labels)[0]
    offset, total = self._global_rows(n)
    rows = lambda t: t[offset:offset + n]
    noise = rows(tf.random.stateless_normal(
        [total, self.latent_dim], self._key(_FAKE_NOISE, critic_step)))
    records['fake'] = tf.stop_gradient(
        self.generator([noise, labels], training=True))
    records['interpolation'] = rows(tf.random.stateless_uniform(
        [total], self._key(_INTERPOLATION, critic_step)))
    return records

  def record_losses(self, records):
    if self.fake_gradient == 'public':
      return losses.real_terms(
          self.loss_type, self.critic([records['real'], records['labels']],
                                      training=True))
    return losses.critic_losses(
        self.loss_type, self.critic, records['real'], records['fake'],
        records['labels'], records['interpolation'], self.gp_weight)

  def public_fakes(self, critic_step):
    """This replica's share of the public fakes (see module doc)."""
    fake_labels, noise, _ = self._generator_inputs(
        _FAKE_LABELS, _FAKE_NOISE, critic_step)
    fake = tf.stop_gradient(self.generator([noise, fake_labels],
                                           training=True))
    return {'fake': fake, 'labels': fake_labels}

  def public_fake_losses(self, fakes):
    return losses.fake_terms(
        self.loss_type, self.critic([fakes['fake'], fakes['labels']],
                                    training=True))

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
    if self.fake_gradient == 'public':
      fakes = self.public_fakes(step)
      fake_grads, _ = dp_gradients.clipped_mean(
          self.grad_engine, self.d_optimizer, self.public_fake_losses,
          self.critic, fakes, 1, self.expected_batch_size, self.chunk_size)
      grads = [g + f for g, f in zip(grads, fake_grads)]
    self.d_optimizer.apply_gradients(zip(grads, variables),
                                     experimental_aggregate_gradients=False)
    if self.critic_weight_clip > 0:
      self._clip_critic_weights()
    # Once per global step, whether or not the ledger is replicated.
    tf.distribute.get_replica_context().merge_call(
        lambda _: self.ledger.critic_steps.assign_add(1))

    # The metrics run the critic on at least one row and drop the padding:
    # oneDNN's convolutions fail on an empty batch (a Poisson batch, or a
    # replica's slice of a small one, can be empty).
    n = tf.shape(labels)[0]
    padded, _ = dp_gradients.pad_to_multiple(records, 1)
    if self.fake_gradient == 'public':
      fake_scores = self.critic([fakes['fake'], fakes['labels']],
                                training=False)
    else:
      fake_scores = self.critic([padded['fake'], padded['labels']],
                                training=False)[:n]
    fake_loss = self._global_mean(losses.fake_terms(self.loss_type,
                                                    fake_scores))
    metrics = {'critic_loss_fake': fake_loss}
    if self.nonprivate_diagnostics:
      real_scores = self.critic([padded['real'], padded['labels']],
                                training=False)[:n]
      record_loss = self._global_mean(self.record_losses(padded)[:n])
      metrics.update({
          # The records' loss, plus the public fakes' term if they are apart.
          'nonprivate_critic_loss': record_loss + (
              fake_loss if self.fake_gradient == 'public' else 0.0),
          'nonprivate_wasserstein_estimate': (self._global_mean(real_scores) -
                                              self._global_mean(fake_scores)),
          'nonprivate_batch_size': self._sum_over_replicas(
              tf.cast(n, tf.float32)),
      })
      if self.grad_engine != 'jacobian':
        clip = self.d_optimizer._dp_sum_query._l2_norm_clip  # pylint: disable=protected-access
        metrics['nonprivate_clipped_fraction'] = self._global_mean(
            tf.cast(norms > clip, tf.float32))
        metrics['nonprivate_mean_grad_norm'] = self._global_mean(norms)
    return metrics

  def _clip_critic_weights(self):
    c = self.critic_weight_clip
    self._update_in_cross_replica(
        self.critic.trainable_variables,
        lambda var: tf.clip_by_value(var, -c, c))

  def update_generator_ema(self, updates):
    """ema <- d * ema + (1 - d) * weights, with d = min(decay, (1+t)/(10+t))
    after t generator updates (tf.train.ExponentialMovingAverage's warm-up),
    so that the random initialisation is forgotten within the first ones."""
    updates = tf.cast(updates, tf.float32)
    decay = tf.minimum(self.ema_decay, (1.0 + updates) / (10.0 + updates))
    self._update_in_cross_replica(
        self.ema_generator.weights,
        lambda average, weight: decay * average + (1.0 - decay) * weight,
        self.generator.weights)

  @staticmethod
  def _update_in_cross_replica(variables, new_value, sources=None):
    """variables[i] <- new_value(variables[i][, sources[i]]), in
    cross-replica context: a replica may not assign a mirrored variable that
    has no aggregation."""

    def update(strategy):
      for i, v in enumerate(variables):
        args = () if sources is None else (sources[i],)
        strategy.extended.update(
            v, lambda var, *a: var.assign(new_value(var, *a)), args=args)

    tf.distribute.get_replica_context().merge_call(update)

  def _generator_inputs(self, label_stream, noise_stream, counter):
    """This replica's slice of a global batch of (labels, noise) of the
    expected batch size, drawn from public randomness only, and the slice's
    fraction of the batch."""
    replica_id, replicas = self._replica()
    size = max(self.expected_batch_size, replicas)
    labels = tf.random.stateless_uniform(
        [size], self._key(label_stream, counter), 0, self.num_classes,
        tf.int32)
    noise = tf.random.stateless_normal(
        [size, self.latent_dim], self._key(noise_stream, counter))
    begin = replica_id * size // replicas
    end = (replica_id + 1) * size // replicas
    fraction = tf.cast(end - begin, tf.float32) / size
    return labels[begin:end], noise[begin:end], fraction

  def generator_update(self, update):
    """Generator update number `update` of the run (from 0), on uniformly
    drawn classes (no real data)."""
    labels, noise, fraction = self._generator_inputs(_GEN_LABELS, _GEN_NOISE,
                                                     update)
    with tf.GradientTape() as tape:
      fake = self.generator([noise, labels], training=True)
      loss = losses.generator_loss(self.critic([fake, labels], training=False))
      # This replica's share of the global mean: the optimizer sums the
      # replicas' gradients.
      share = loss * fraction
    grads = tape.gradient(share, self.generator.trainable_variables)
    self.g_optimizer.apply_gradients(zip(grads,
                                         self.generator.trainable_variables))
    if self.ema_generator is not None:
      self.update_generator_ema(update + 1)
    return self._sum_over_replicas(share)

  def train_step(self, data):
    """`data`: a tuple of n_critic (uint8 images, int32 labels) batches."""
    per_step = [self.critic_step(images, labels) for images, labels in data]
    metrics = {k: tf.add_n([m[k] for m in per_step]) / len(per_step)
               for k in per_step[0]}
    first = self.generator_steps * self.n_generator
    generator_losses = [self.generator_update(first + i)
                        for i in range(self.n_generator)]
    self.generator_steps.assign_add(1)
    metrics['generator_loss'] = tf.add_n(generator_losses) / self.n_generator
    return metrics
