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

Metrics: by default only quantities computed from the DP-noised critic and
public randomness: the generator loss, epsilon, and the critic's loss on
fakes of uniformly drawn classes at the expected batch size (never on the
fakes paired with the real batch, whose labels and count are private). That
loss is taken on the fakes of the step's first generator update, which the
critic (after the step's critic updates) scores anyway, so no generator or
critic pass runs for the metric alone.
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

import dataclasses

import tensorflow as tf

from dpgan_tf import config as config_lib
from dpgan_tf import data as data_lib
from dpgan_tf import dp_gradients
from dpgan_tf import losses

keras = tf.keras

# RNG streams, folded into the run seed.
(_FAKE_NOISE, _INTERPOLATION, _DP_NOISE, _GEN_NOISE, _GEN_LABELS,
 _FAKE_LABELS) = range(6)
# The warm start's streams (warm_start.py), apart from the ones above.
WARM_START_FREQUENCIES, WARM_START_RELEASE, WARM_START_NOISE = range(100, 103)


def rng_key(seed, stream: int, counter):
  """The stateless RNG key of draw `counter` of `stream` in the run `seed`:
  every draw of a run has its own, and a resumed run draws what the
  uninterrupted run would have."""
  base = tf.stack([tf.cast(seed, tf.int64), tf.constant(stream, tf.int64)])
  return tf.random.experimental.stateless_fold_in(base, counter)


@dataclasses.dataclass(frozen=True)
class GANOptions:
  """How a ConditionalDPGAN trains, apart from its networks, ledger and seed
  (training.gan_options builds it from the flags)."""
  num_classes: int
  latent_dim: int
  loss: str = 'hinge'
  n_critic: int = 1
  n_generator: int = 1
  gp_weight: float = 10.0
  critic_weight_clip: float = 0.0
  microbatch_size: int = 1
  expected_batch_size: int = 64
  fake_gradient: str = 'paired'
  # Decay of the generator's moving average, if the model keeps one.
  ema_decay: float = 0.0
  nonprivate_diagnostics: bool = False

  def __post_init__(self):
    if self.fake_gradient not in config_lib.FAKE_GRADIENTS:
      raise ValueError(f'--fake_gradient={self.fake_gradient!r}: choose one '
                       f'of {config_lib.FAKE_GRADIENTS}.')


class ConditionalDPGAN(keras.Model):
  """Generator + critic trained with a DP critic optimizer."""

  def __init__(self, generator, critic, ledger, options: GANOptions, *,
               seed=0, ema_generator=None, **kwargs):
    super().__init__(**kwargs)
    # Every replica returns the global metrics (see module doc); Keras's
    # default would sum them over replicas.
    self.distribute_reduction_method = 'first'
    self.generator = generator
    self.critic = critic
    self.ledger = ledger
    self.options = options
    self.ema_generator = ema_generator
    # Counters are written identically by every replica.
    same = tf.VariableAggregation.ONLY_FIRST_REPLICA
    self.seed = tf.Variable(seed, dtype=tf.int64, trainable=False)
    # Generator steps (train steps) taken, of n_generator updates each.
    self.generator_steps = tf.Variable(0, dtype=tf.int64, trainable=False,
                                       aggregation=same)
    # Read by the DP optimizer's query; set before every critic update.
    self.noise_seed = tf.Variable([0, 0], dtype=tf.int64, trainable=False,
                                  aggregation=same)

  def compile(self, critic_optimizer, generator_optimizer, **kwargs):
    super().compile(**kwargs)
    self.critic_optimizer = critic_optimizer
    self.generator_optimizer = generator_optimizer

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
    if self.options.fake_gradient == 'public':
      return records
    n = tf.shape(labels)[0]
    offset, total = self._global_rows(n)
    rows = lambda t: t[offset:offset + n]
    noise = rows(tf.random.stateless_normal(
        [total, self.options.latent_dim], self._key(_FAKE_NOISE, critic_step)))
    records['fake'] = tf.stop_gradient(
        self.generator([noise, labels], training=True))
    records['interpolation'] = rows(tf.random.stateless_uniform(
        [total], self._key(_INTERPOLATION, critic_step)))
    return records

  def record_losses(self, records):
    if self.options.fake_gradient == 'public':
      return losses.real_terms(
          self.options.loss,
          self.critic([records['real'], records['labels']], training=True))
    return losses.critic_losses(
        self.options.loss, self.critic, records['real'], records['fake'],
        records['labels'], records['interpolation'], self.options.gp_weight)

  def public_fakes(self, critic_step):
    """This replica's share of the public fakes (see module doc); the
    critic's default loss metric is taken on them in either mode."""
    fake_labels, noise, _ = self._generator_inputs(
        _FAKE_LABELS, _FAKE_NOISE, critic_step)
    fake = tf.stop_gradient(self.generator([noise, fake_labels],
                                           training=True))
    return {'fake': fake, 'labels': fake_labels}

  def public_fake_losses(self, fakes):
    return losses.fake_terms(
        self.options.loss,
        self.critic([fakes['fake'], fakes['labels']], training=True))

  def critic_step(self, images, labels):
    """One private critic update on one real batch; returns its opt-in
    non-private metrics (none by default)."""
    step = self.ledger.critic_steps
    records = self.critic_records(images, labels, step)
    self.noise_seed.assign(self._key(_DP_NOISE, step))
    fakes = None
    if (self.options.fake_gradient == 'public' or
        self.options.nonprivate_diagnostics):
      fakes = self.public_fakes(step)
    self.critic_optimizer.minimize(self.private_loss(records, fakes),
                                   self.critic.trainable_variables)
    if self.options.critic_weight_clip > 0:
      self._clip_critic_weights()
    # Once per global step, whether or not the ledger is replicated.
    tf.distribute.get_replica_context().merge_call(
        lambda _: self.ledger.critic_steps.assign_add(1))
    if not self.options.nonprivate_diagnostics:
      return {}
    fake_scores = self.critic([fakes['fake'], fakes['labels']],
                              training=False)
    fake_loss = self._global_mean(losses.fake_terms(self.options.loss,
                                                    fake_scores))
    return self._nonprivate_metrics(records, labels, fake_loss, fake_scores)

  def private_loss(self, records, fakes) -> dp_gradients.PrivateLoss:
    """The critic's loss as its DP optimizer takes it (dp_gradients)."""
    public = {}
    if self.options.fake_gradient == 'public':
      public = dict(public_loss_fn=self.public_fake_losses,
                    public_records=fakes, expected_public_records=float(
                        self.options.expected_batch_size))
    return dp_gradients.PrivateLoss(
        self.record_losses, records, self.critic, self.options.microbatch_size,
        self.options.expected_batch_size / self.options.microbatch_size,
        differentiates_inputs=self.options.loss == 'wgan_gp', **public)

  def _nonprivate_metrics(self, records, labels, fake_loss, fake_scores):
    """Statistics of the real batch, outside the guarantee (opt-in).

    The critic runs on at least one row and the padding is dropped: oneDNN's
    convolutions fail on an empty batch (a Poisson batch, or a replica's
    slice of a small one, can be empty).
    """
    n = tf.shape(labels)[0]
    padded, _ = dp_gradients.pad_to_multiple(records, 1)
    real_scores = self.critic([padded['real'], padded['labels']],
                              training=False)[:n]
    record_loss = self._global_mean(self.record_losses(padded)[:n])
    metrics = {
        # The records' loss, plus the public fakes' term if they are apart.
        'nonprivate_critic_loss': record_loss + (
            fake_loss if self.options.fake_gradient == 'public' else 0.0),
        'nonprivate_wasserstein_estimate': (self._global_mean(real_scores) -
                                            self._global_mean(fake_scores)),
        'nonprivate_batch_size': self._sum_over_replicas(
            tf.cast(n, tf.float32)),
    }
    if self.critic_optimizer.grad_engine != 'jacobian':
      norms = self.critic_optimizer.record_norms
      metrics['nonprivate_clipped_fraction'] = self._global_mean(
          tf.cast(norms > self.critic_optimizer.l2_norm_clip, tf.float32))
      metrics['nonprivate_mean_grad_norm'] = self._global_mean(norms)
    return metrics

  def _clip_critic_weights(self):
    c = self.options.critic_weight_clip
    self._update_in_cross_replica(
        self.critic.trainable_variables,
        lambda var: tf.clip_by_value(var, -c, c))

  def update_generator_ema(self, updates):
    """ema <- d * ema + (1 - d) * weights, with d = min(decay, (1+t)/(10+t))
    after t generator updates (tf.train.ExponentialMovingAverage's warm-up),
    so that the random initialisation is forgotten within the first ones."""
    updates = tf.cast(updates, tf.float32)
    decay = tf.minimum(self.options.ema_decay,
                       (1.0 + updates) / (10.0 + updates))
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
    size = max(self.options.expected_batch_size, replicas)
    labels = tf.random.stateless_uniform(
        [size], self._key(label_stream, counter), 0, self.options.num_classes,
        tf.int32)
    noise = tf.random.stateless_normal(
        [size, self.options.latent_dim], self._key(noise_stream, counter))
    begin = replica_id * size // replicas
    end = (replica_id + 1) * size // replicas
    fraction = tf.cast(end - begin, tf.float32) / size
    return labels[begin:end], noise[begin:end], fraction

  def generator_update(self, update):
    """Generator update number `update` of the run (from 0), on uniformly
    drawn classes (no real data). Returns the generator's loss and the
    critic's loss on the same fakes (see module doc), both before the
    update."""
    labels, noise, fraction = self._generator_inputs(_GEN_LABELS, _GEN_NOISE,
                                                     update)
    with tf.GradientTape() as tape:
      fake = self.generator([noise, labels], training=True)
      scores = self.critic([fake, labels], training=False)
      # This replica's share of the global mean: the optimizer sums the
      # replicas' gradients.
      share = losses.generator_loss(scores) * fraction
    grads = tape.gradient(share, self.generator.trainable_variables)
    self.generator_optimizer.apply_gradients(
        zip(grads, self.generator.trainable_variables))
    if self.ema_generator is not None:
      self.update_generator_ema(update + 1)
    critic_loss = self._global_mean(losses.fake_terms(
        self.options.loss, tf.stop_gradient(scores)))
    return self._sum_over_replicas(share), critic_loss

  def train_step(self, data):
    """`data`: a tuple of n_critic (uint8 images, int32 labels) batches."""
    per_step = [self.critic_step(images, labels) for images, labels in data]
    metrics = {k: tf.add_n([m[k] for m in per_step]) / len(per_step)
               for k in per_step[0]}
    first = self.generator_steps * self.options.n_generator
    generator_losses, critic_losses = zip(*[
        self.generator_update(first + i)
        for i in range(self.options.n_generator)])
    self.generator_steps.assign_add(1)
    metrics['critic_loss_fake'] = critic_losses[0]
    metrics['generator_loss'] = (tf.add_n(generator_losses) /
                                 self.options.n_generator)
    return metrics
