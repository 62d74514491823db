"""Per-example critic losses and the generator loss.

DP-SGD clips the gradient of each record, so the critic loss is a vector with
one entry per record. By default (`--fake_gradient=paired`) a record is one
real example paired with one fake of the same class, drawn from its own noise
vector: the fake depends on nothing else in the batch (see networks.py), so
adding or removing a real example adds or removes exactly one record. With
`--fake_gradient=public` the records hold the real term alone and the fake
term is taken on fakes that read no real data (see gan.py); `real_terms` and
`fake_terms` are the two halves either way.
"""

import tensorflow as tf

from dpgan_tf import config as config_lib



def real_terms(loss: str, real_scores: tf.Tensor) -> tf.Tensor:
  """The critic loss's term on real examples, per example (no penalty)."""
  if loss == 'hinge':
    return tf.nn.relu(1.0 - real_scores)
  return -real_scores


def fake_terms(loss: str, fake_scores: tf.Tensor) -> tf.Tensor:
  """The critic loss's term on fakes, per fake: it reads no real data."""
  if loss == 'hinge':
    return tf.nn.relu(1.0 + fake_scores)
  return fake_scores


def critic_losses(loss: str, critic, real, fake, labels, interpolation=None,
                  gp_weight: float = 10.0) -> tf.Tensor:
  """Per-record critic loss [B].

  Args:
    loss: one of config_lib.CRITIC_LOSSES.
    critic: (images, labels) -> scores [B].
    real: real images [B, H, W, C] in [-1, 1].
    fake: fake images paired with them, same shape.
    labels: int32 [B], the class of both.
    interpolation: float [B] in [0, 1], where on the real-fake segment the
      gradient penalty is taken (wgan_gp only).
    gp_weight: the penalty's weight (wgan_gp only).
  """
  if loss not in config_lib.CRITIC_LOSSES:
    raise ValueError(f'--loss={loss!r}: choose one of '
                     f'{config_lib.CRITIC_LOSSES}.')
  losses = (real_terms(loss, critic([real, labels], training=True)) +
            fake_terms(loss, critic([fake, labels], training=True)))
  if loss == 'wgan_gp':
    return losses + gp_weight * gradient_penalty(critic, real, fake, labels,
                                                 interpolation)
  return losses


def gradient_penalty(critic, real, fake, labels, interpolation) -> tf.Tensor:
  """(||grad_x D(x_hat)|| - 1)^2 per record (Gulrajani et al., 2017).

  The critic does not mix examples, so the gradient of the summed scores with
  respect to the batch of interpolates holds each record's own input gradient.
  """
  t = tf.reshape(interpolation, [-1, 1, 1, 1])
  mixed = t * real + (1.0 - t) * fake
  with tf.GradientTape() as tape:
    tape.watch(mixed)
    scores = critic([mixed, labels], training=True)
  grads = tape.gradient(scores, mixed)
  norms = tf.sqrt(tf.reduce_sum(tf.square(grads), axis=[1, 2, 3]) + 1e-12)
  return tf.square(norms - 1.0)


def generator_loss(fake_scores: tf.Tensor) -> tf.Tensor:
  """-E[D(G(z))]: the generator loss of WGAN, WGAN-GP and hinge GANs alike."""
  return -tf.reduce_mean(fake_scores)
