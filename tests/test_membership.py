"""Membership inference: the attacks, critic loading, and the attack telling
an over-fitted non-private critic from a private one."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from dpgan_tf import data as data_lib
from dpgan_tf import dp_gradients
from dpgan_tf import membership
from dpgan_tf import networks
from dpgan_tf import privacy

SPEC = data_lib.DATASETS['fashion_mnist']


def test_builtin_threshold_attack_on_separated_and_equal_scores():
  perfect = membership.builtin_threshold_attack(np.array([2.0, 3.0]),
                                                np.array([0.0, 1.0]))
  assert perfect == {'auc': 1.0, 'advantage': 1.0}
  scores = np.random.default_rng(0).normal(size=2000)
  chance = membership.builtin_threshold_attack(scores[:1000], scores[1000:])
  assert chance['auc'] == pytest.approx(0.5, abs=0.05)
  assert chance['advantage'] < 0.1


def test_run_attacks_reports_the_fallback():
  result = membership.run_attacks(np.ones(4), np.zeros(4), 'builtin-threshold')
  assert result['implementation'] == membership.BUILTIN
  assert result['auc'] == 1.0 and result['advantage'] == 1.0
  assert result['num_members'] == result['num_nonmembers'] == 4


def test_auto_falls_back_when_tf_privacy_attacks_are_absent(monkeypatch):
  monkeypatch.setattr(membership, '_tf_privacy_attacks',
                      lambda: (None, 'not installed'))
  result = membership.run_attacks(np.ones(4), np.zeros(4))
  assert result['implementation'] == membership.BUILTIN
  assert result['fallback_reason'] == 'not installed'
  with pytest.raises(membership.MembershipError, match='requirements-attacks'):
    membership.run_attacks(np.ones(4), np.zeros(4), membership.TF_PRIVACY)


def test_tf_privacy_attacks_agree_with_builtin_threshold():
  if membership._tf_privacy_attacks()[0] is None:  # pylint: disable=protected-access
    pytest.skip('optional extra requirements-attacks.txt not installed')
  rng = np.random.default_rng(1)
  members, nonmembers = rng.normal(0.5, size=300), rng.normal(size=300)
  result = membership.run_attacks(members, nonmembers, membership.TF_PRIVACY)
  assert set(result['attacks']) == {'threshold_attack', 'logistic_regression'}
  builtin = membership.builtin_threshold_attack(members, nonmembers)
  assert result['attacks']['threshold_attack'] == pytest.approx(builtin)


def test_advantage_bound():
  assert membership.advantage_bound(0.0, 0.0) == 0.0
  assert membership.advantage_bound(1.0, 0.0) == pytest.approx(
      (np.e - 1) / (np.e + 1))
  # 1 - 2/(e^50 + 1) + ...: 1 to float precision, never above it.
  assert membership.advantage_bound(50.0, 1e-5) == pytest.approx(1.0)
  assert membership.advantage_bound(50.0, 1e-5) <= 1.0


def _train_critic(members, fake_pool, private: bool, steps: int = 100,
                  seed: int = 0):
  """A tiny critic trained to tell members from a perfect generator's fakes.

  Fakes are real images from a disjoint pool, i.e. samples of the data
  distribution itself: anything the critic learns beyond chance is
  memorisation of the members, the worst case for privacy. The private
  critic takes the same steps through the project's DP gradient path (ghost
  clipping, one record per microbatch) with a heavily noised Adam.
  """
  tf.keras.utils.set_random_seed(seed)
  critic = networks.build_critic(SPEC.image_shape, SPEC.num_classes, width=8)
  batch = 32
  noise_seed = tf.Variable([seed, 0], dtype=tf.int64)
  if private:
    optimizer = privacy.DPCriticAdamOptimizer(0.1, 2.0, None, noise_seed,
                                              'ghost', learning_rate=1e-3)
  else:
    optimizer = tf.keras.optimizers.legacy.Adam(1e-3)
  real_x = data_lib.to_model_range(members.images)
  fake_x = data_lib.to_model_range(fake_pool.images)

  def per_record_loss(records):
    real_images, real_labels, fake_images, fake_labels = records
    real = critic([real_images, real_labels], training=True)
    fake = critic([fake_images, fake_labels], training=True)
    return tf.nn.relu(1 - real) + tf.nn.relu(1 + fake)

  @tf.function
  def step(real_idx, fake_idx):
    records = (tf.gather(real_x, real_idx), tf.gather(members.labels, real_idx),
               tf.gather(fake_x, fake_idx),
               tf.gather(fake_pool.labels, fake_idx))
    if private:
      loss = dp_gradients.PrivateLoss(per_record_loss, records, critic, 1,
                                      batch)
      optimizer.minimize(loss, critic.trainable_variables)
    else:
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(per_record_loss(records))
      grads = tape.gradient(loss, critic.trainable_variables)
      optimizer.apply_gradients(zip(grads, critic.trainable_variables))

  rng = np.random.default_rng(seed)
  for step_number in range(steps):
    noise_seed.assign([seed, step_number])  # Fresh noise every step.
    step(rng.integers(len(members), size=batch),
         rng.integers(len(fake_pool), size=batch))
  return critic


def _subset(split, start, stop):
  return data_lib.LabeledImages(split.images[start:stop],
                                split.labels[start:stop], split.spec)


def test_attack_separates_overfitted_critic_from_private_one(
    fashion_mnist_small):
  members = _subset(fashion_mnist_small, 0, 64)
  nonmembers = _subset(fashion_mnist_small, 64, 128)
  fake_pool = _subset(fashion_mnist_small, 128, 512)
  auc = {}
  for private in (False, True):
    critic = _train_critic(members, fake_pool, private)
    auc[private] = membership.run_attacks(
        membership.critic_scores(critic, members.images, members.labels),
        membership.critic_scores(critic, nonmembers.images,
                                 nonmembers.labels), membership.BUILTIN)['auc']
  assert auc[False] > 0.8, auc
  assert auc[True] < 0.7, auc
  assert auc[False] - auc[True] > 0.2, auc


def _save_run(model_dir, critic_width=8, dataset='fashion_mnist',
              max_train_examples=100, critic_norm='none'):
  critic = networks.build_critic(SPEC.image_shape, SPEC.num_classes,
                                 critic_width, critic_norm)
  tf.train.Checkpoint(critic=critic).save(os.path.join(model_dir, 'ckpt'))
  with open(os.path.join(model_dir, 'run_config.json'), 'w') as f:
    json.dump({'dataset': dataset, 'critic_width': critic_width,
               'max_train_examples': max_train_examples}, f)
  return critic


def test_attack_critic_uses_the_first_k_training_examples(
    tmp_path, fashion_mnist_small):
  critic = _save_run(str(tmp_path), max_train_examples=100)
  test = _subset(fashion_mnist_small, 400, 512)
  result = membership.attack_critic(str(tmp_path), SPEC, fashion_mnist_small,
                                    test, seed=0,
                                    implementation=membership.BUILTIN)
  assert result['num_members'] == result['num_nonmembers'] == 100
  assert result['members'].startswith('first 100 training examples')
  assert 0.0 <= result['auc'] <= 1.0
  restored, _ = membership.load_critic(
      str(tmp_path), SPEC, {'critic_width': 8})
  for a, b in zip(critic.weights, restored.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize('run_config', [
    {'critic_width': 8, 'critic_norm': 'layer'},
    {'critic_width': 8, 'critic_norm': 'none'},
    {'critic_width': 8},  # Written before --critic_norm existed: none.
])
def test_load_critic_builds_the_runs_normalisation(tmp_path, run_config):
  """Layer norm has no variables, so the checkpoint cannot tell: the run's
  config must, or the attack would score with another function."""
  saved = _save_run(str(tmp_path),
                    critic_norm=run_config.get('critic_norm', 'none'))
  restored, _ = membership.load_critic(str(tmp_path), SPEC, run_config)
  images = tf.random.normal([4, *SPEC.image_shape])
  labels = tf.constant([0, 1, 2, 3])
  np.testing.assert_allclose(restored([images, labels]),
                             saved([images, labels]), rtol=1e-5, atol=1e-6)


def test_bad_runs_are_rejected(tmp_path):
  with pytest.raises(membership.MembershipError, match='run_config.json'):
    membership.read_run_config(str(tmp_path), SPEC)
  _save_run(str(tmp_path), dataset='mnist')
  with pytest.raises(membership.MembershipError, match="trained on 'mnist'"):
    membership.read_run_config(str(tmp_path), SPEC)
  with pytest.raises(membership.MembershipError, match='does not match'):
    membership.load_critic(str(tmp_path), SPEC, {'critic_width': 16})
