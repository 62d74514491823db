"""The private warm start: its sensitivity, its composition with DP-SGD,
its calibration, and that it resumes without drawing its release again."""

import dataclasses
import os

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant
import numpy as np
import pytest
import tensorflow as tf

from dpgan_tf import config as config_lib
from dpgan_tf import evaluation
from dpgan_tf import export
from dpgan_tf import privacy
from dpgan_tf import training
from dpgan_tf import warm_start
from test_training import tiny_config


def _small_data(seed=0):
  """13 images of 3 classes, one class with a single example (removing it
  empties its row), and a black and a white image (the extremes)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, [13, 6, 6, 1], dtype=np.uint8)
  images[0] = 0
  images[1] = 255
  labels = np.array([0, 1, 2, 0, 0, 1, 1, 0, 1, 0, 1, 0, 1], np.int32)
  return images, labels


@pytest.mark.parametrize('length_scale', [0.05, 5.0, 500.0])
def test_add_remove_one_moves_the_statistic_by_exactly_one(length_scale):
  images, labels = _small_data()
  freqs = warm_start.frequencies(7, 36, 50, length_scale)
  full = warm_start.class_sums(images, labels, 3, freqs).numpy()
  moves = []
  for i in range(len(labels)):
    rest = np.delete(np.arange(len(labels)), i)
    without = warm_start.class_sums(images[rest], labels[rest], 3, freqs)
    moves.append(np.linalg.norm(full - without.numpy()))
    # Only the removed example's class row changes (beyond the summation
    # order's rounding).
    changed = np.flatnonzero(np.abs(full - without.numpy()).max(axis=1) >
                             1e-9)
    assert changed.tolist() == [labels[i]]
  # Adding one: an example of class 2 (the class with one example).
  added = warm_start.class_sums(np.concatenate([images, images[:1]]),
                                np.append(labels, 2), 3, freqs).numpy()
  moves.append(np.linalg.norm(added - full))
  assert max(moves) <= 1.0 + 1e-12
  assert min(moves) >= 1.0 - 1e-12  # Attained by every example.


def test_class_means_decode_the_noise_free_release():
  images, labels = _small_data(1)
  freqs = warm_start.frequencies(3, 36, 40, 5.0)
  statistic = warm_start.class_sums(images, labels, 3, freqs)
  np.testing.assert_allclose(statistic[:, -1].numpy() /
                             warm_start.COUNT_WEIGHT, [6, 6, 1], rtol=1e-12)
  phi = warm_start.features(images / 255.0, tf.cast(freqs, tf.float64))
  expected = [phi.numpy()[labels == k].mean(axis=0) for k in range(3)]
  np.testing.assert_allclose(warm_start.class_means(statistic), expected,
                             atol=1e-6)


def test_release_noise_is_keyed_by_the_seed_with_stddev_sigma():
  statistic = tf.constant(np.arange(3 * 20001, dtype=np.float64).reshape(
      3, 20001))
  first = warm_start.release(statistic, 2.5, 9).numpy()
  np.testing.assert_array_equal(first, warm_start.release(statistic, 2.5, 9))
  noise = first - statistic.numpy()
  assert noise.std() == pytest.approx(2.5, rel=0.02)
  assert abs(noise.mean()) < 0.05
  other = warm_start.release(statistic, 2.5, 10).numpy()
  assert np.corrcoef(noise.ravel(), (other - statistic).numpy().ravel())[
      0, 1] < 0.02


def _independent_epsilon(warm_sigma, sigma, q, steps, delta):
  """A fresh RdpAccountant composing the two phases event by event."""
  accountant = rdp_privacy_accountant.RdpAccountant()
  accountant.compose(dp_accounting.GaussianDpEvent(warm_sigma))
  if steps:
    accountant.compose(dp_accounting.PoissonSampledDpEvent(
        q, dp_accounting.GaussianDpEvent(sigma)), steps)
  return accountant.get_epsilon(delta)


@pytest.mark.parametrize('warm_sigma,sigma,q,steps,delta', [
    (12.3, 0.8, 0.01, 1000, 1e-5), (2.0, 1.5, 0.1, 7, 1e-4),
    (40.0, 0.6, 512 / 55000, 1070, 1e-5), (5.0, 1.1, 0.02, 0, 1e-5)])
def test_composed_epsilon_equals_dp_accounting(warm_sigma, sigma, q, steps,
                                               delta):
  expected = _independent_epsilon(warm_sigma, sigma, q, steps, delta)
  assert privacy.compute_epsilon(sigma, q, steps, delta, 1,
                                 warm_sigma) == expected
  ledger = privacy.PrivacyLedger(sigma, q, delta, 1000, 1, 1.0, 'poisson',
                                 'mnist', warm_sigma)
  ledger.critic_steps.assign(steps)
  # Nothing released yet: the critic steps alone.
  assert ledger.epsilon() == privacy.compute_epsilon(sigma, q, steps, delta)
  ledger.warm_start_releases.assign(1)
  assert ledger.epsilon() == expected
  assert f'{expected:.4g}' in privacy.guarantee_statement(ledger)
  assert f'sigma={warm_sigma:.4g}' in privacy.guarantee_statement(ledger)


@pytest.mark.parametrize('target,share,q,steps', [
    (1.0, 0.3, 512 / 55000, 214), (5.0, 0.1, 0.125, 16), (2.0, 0.7, 0.05, 100)])
def test_calibration_meets_the_composed_target_tightly(target, share, q,
                                                       steps):
  delta = 1e-5
  warm_sigma = privacy.calibrate_warm_start_noise_multiplier(share * target,
                                                             delta)
  alone = privacy.warm_start_epsilon(warm_sigma, delta)
  accountant = rdp_privacy_accountant.RdpAccountant()
  accountant.compose(dp_accounting.GaussianDpEvent(warm_sigma))
  assert alone == accountant.get_epsilon(delta)
  assert share * target * 0.999 <= alone <= share * target
  sigma = privacy.calibrate_noise_multiplier(target, delta, q, steps, 1,
                                             warm_sigma)
  assert (target * 0.999 <= _independent_epsilon(warm_sigma, sigma, q, steps,
                                                 delta) <= target)
  assert _independent_epsilon(warm_sigma, sigma * 0.99, q, steps,
                              delta) > target
  # The warm start's share costs the critic noise.
  assert sigma > privacy.calibrate_noise_multiplier(target, delta, q, steps)


def test_warm_ledger_round_trips_and_old_layout_reads_zero(tmp_path):
  ledger = privacy.PrivacyLedger(0.9, 0.1, 1e-5, 100, 1, 1.0, 'poisson',
                                 'mnist', 7.5)
  ledger.warm_start_releases.assign(1)
  ledger.critic_steps.assign(30)
  path = tf.train.Checkpoint(ledger=ledger).save(str(tmp_path / 'w' / 'c'))
  restored = privacy.PrivacyLedger(warm_start_noise_multiplier=0.0)
  tf.train.Checkpoint(ledger=restored).restore(path).assert_consumed()
  assert restored.as_dict() == ledger.as_dict()
  assert restored.epsilon() == ledger.epsilon()
  # A ledger without a warm start keeps the old layout.
  old = privacy.PrivacyLedger(0.9, 0.1, 1e-5, 100, 1, 1.0, 'poisson', 'mnist')
  path = tf.train.Checkpoint(ledger=old).save(str(tmp_path / 'o' / 'c'))
  assert not [n for n, _ in tf.train.list_variables(path) if 'warm' in n]
  read = privacy.PrivacyLedger(warm_start_noise_multiplier=0.0)
  tf.train.Checkpoint(ledger=read).restore(path).expect_partial()
  assert read.as_dict() == old.as_dict()
  assert read.as_dict()['warm_start_noise_multiplier'] == 0.0


def warm_config(tmp_path, tfds_dir, **overrides):
  """The tiny run, with a 7-step warm start (checkpoints at 0, 3, 6, 7)."""
  values = dict(noise_multiplier=None, target_epsilon=5.0,
                warm_start='mean_embedding', warm_start_steps=7,
                warm_start_features=64, generator_ema=0.9)
  values.update(overrides)
  return tiny_config(tmp_path, tfds_dir, **values)


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory, tfds_dir):
  config = warm_config(tmp_path_factory.mktemp('straight'), tfds_dir)
  return config, training.train(config)


def _state(model_dir):
  """Weights, the warm start's state and the ledger's numbers."""
  reader = tf.train.load_checkpoint(model_dir)
  tensors = {name: reader.get_tensor(name)
             for name, _ in tf.train.list_variables(model_dir)
             if name.startswith(('generator/', 'critic/', 'generator_ema/',
                                 'warm_start/', 'ledger/'))}
  return {n: t for n, t in tensors.items()
          if np.asarray(t).dtype.kind in 'fiu'}


def _crash_at(monkeypatch, crash_step):
  """Makes the warm start's pre-training raise at its step crash_step."""
  make = warm_start.make_pretrain_step

  def crashing(*args, **kwargs):
    step = make(*args, **kwargs)

    def maybe_crash(counter):
      if int(counter) == crash_step:
        raise KeyboardInterrupt('simulated crash')
      return step(counter)
    return maybe_crash

  monkeypatch.setattr(warm_start, 'make_pretrain_step', crashing)


def _never_release_again(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('the release was drawn again on resume')
  monkeypatch.setattr(warm_start, 'class_sums', fail)


@pytest.mark.parametrize('crash_step,latest', [(0, 'warm_start-0'),
                                               (5, 'warm_start-3')])
def test_crash_in_warm_start_resumes_equal_to_uninterrupted(
    tmp_path, tfds_dir, straight_run, monkeypatch, crash_step, latest):
  config = warm_config(tmp_path, tfds_dir)
  with monkeypatch.context() as patch:
    _crash_at(patch, crash_step)
    with pytest.raises(KeyboardInterrupt):
      training.train(config)
  assert os.path.basename(tf.train.latest_checkpoint(
      config.model_dir)) == latest
  saved = training.read_saved_ledger(config.model_dir).as_dict()
  assert saved['warm_start_releases'] == 1 and saved['critic_steps'] == 0
  _never_release_again(monkeypatch)
  resumed = training.train(config)
  straight_config, straight = straight_run
  assert resumed.epsilon == straight.epsilon <= 5.0
  assert resumed.critic_steps == straight.critic_steps == 8
  a, b = _state(straight_config.model_dir), _state(config.model_dir)
  assert a.keys() == b.keys()
  assert 'warm_start/release/.ATTRIBUTES/VARIABLE_VALUE' in a
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)
  np.testing.assert_array_equal(
      a['warm_start/release/.ATTRIBUTES/VARIABLE_VALUE'],
      b['warm_start/release/.ATTRIBUTES/VARIABLE_VALUE'])


def test_export_and_tensorboard_state_the_composed_total(straight_run):
  config, result = straight_run
  meta = export.read_metadata(export.resolve_version_dir(config.export_dir))
  warm = meta['warm_start']
  assert (warm['mechanism'], warm['l2_sensitivity'], warm['epsilon_share'],
          warm['released']) == ('gaussian', 1.0, 0.3, True)
  expected = _independent_epsilon(warm['noise_multiplier'],
                                  meta['noise_multiplier'],
                                  meta['sampling_rate'], meta['critic_steps'],
                                  meta['delta'])
  assert meta['epsilon'] == result.epsilon == expected
  assert 5.0 * 0.999 <= meta['epsilon'] <= 5.0
  assert warm['epsilon'] == pytest.approx(1.5, rel=1e-3)
  assert warm['epsilon'] <= 1.5
  assert f'{expected:.4g}' in meta['guarantee']
  assert 'warm-start Gaussian release' in meta['guarantee']
  scalars = {}
  log_dir = os.path.join(config.model_dir, 'train')
  for name in os.listdir(log_dir):
    for event in tf.compat.v1.train.summary_iterator(
        os.path.join(log_dir, name)):
      for v in event.summary.value:
        if v.tag.startswith(('privacy/', 'warm_start/')):
          scalars.setdefault(v.tag, []).append(
              (event.step, float(tf.make_ndarray(v.tensor))))
  assert sorted(s for s, _ in scalars['warm_start/loss']) == list(range(1, 8))
  # TensorBoard keeps float32.
  assert scalars['privacy/warm_start_epsilon'] == [
      (0, pytest.approx(warm['epsilon'], rel=1e-6))]
  assert max(e for _, e in scalars['privacy/epsilon']) == pytest.approx(
      meta['epsilon'], rel=1e-6)
  # The DP phase's epsilon starts from the warm start's.
  assert min(e for _, e in scalars['privacy/epsilon']) > warm['epsilon']


def test_whole_budget_warm_start_has_no_dp_sgd_phase(tmp_path, tfds_dir):
  config = warm_config(tmp_path, tfds_dir, warm_start_epsilon_share=1.0)
  result = training.train(config)
  assert (result.critic_steps, result.generator_steps) == (0, 0)
  assert 'no DP-SGD phase' in result.message
  meta = export.read_metadata(export.resolve_version_dir(config.export_dir))
  warm = meta['warm_start']
  accountant = rdp_privacy_accountant.RdpAccountant()
  accountant.compose(dp_accounting.GaussianDpEvent(warm['noise_multiplier']))
  assert meta['epsilon'] == result.epsilon == accountant.get_epsilon(
      meta['delta'])
  assert 5.0 * 0.999 <= meta['epsilon'] <= 5.0
  assert (meta['noise_multiplier'], meta['critic_steps'],
          warm['epsilon_share']) == (None, 0, 1.0)
  assert meta['guarantee'].endswith(
      f'one warm-start Gaussian release, sigma={warm["noise_multiplier"]:.4g},'
      ' L2 sensitivity 1, no DP-SGD phase]')
  # The export is the pre-trained generator (its moving average was set to
  # it), and the critic was never updated.
  final = os.path.join(config.model_dir, 'warm_start-7')
  assert tf.train.latest_checkpoint(config.model_dir) == final
  exported = tf.saved_model.load(export.resolve_version_dir(config.export_dir))
  reader = tf.train.load_checkpoint(final)
  kernel = [v for v in exported.generator.variables if 'kernel' in v.name][0]
  assert any(np.array_equal(kernel.numpy(), reader.get_tensor(name))
             for name, _ in tf.train.list_variables(final)
             if name.startswith('generator_ema/') and 'kernel' in name)
  assert evaluation.membership_skipped(config.model_dir, meta) == (
      'no DP-SGD phase: the critic was never trained')
  # Nothing is left to do: a rerun exports nothing new and spends nothing.
  again = training.train(config)
  assert (again.epsilon, again.export_path) == (result.epsilon, None)
  # The DP-SGD phase's flags change nothing, so a preset can leave them out.
  other = dataclasses.replace(
      config, model_dir=str(tmp_path / 'other'),
      export_dir=str(tmp_path / 'other_export'), critic_width=16, epochs=3,
      n_critic=2, loss='wgan_gp', critic_lr=1e-3, generator_lr=1e-3,
      generator_ema=0.0, l2_norm_clip=0.5)
  training.train(other)
  noise = tf.random.stateless_normal([8, config.latent_dim], [1, 2])
  labels = tf.range(8) % 10
  other_export = tf.saved_model.load(
      export.resolve_version_dir(other.export_dir))
  np.testing.assert_array_equal(
      exported.serve(noise=noise, labels=labels)['images'],
      other_export.serve(noise=noise, labels=labels)['images'])
  # With no DP-SGD phase, a critic step would have no guarantee.
  assert privacy.EpsilonCurve(0.0, 0.1, 1e-5, 1, 4.0)(1) == float('inf')


def test_runs_without_a_warm_start_are_unchanged_and_refuse_one_later(
    tmp_path, tfds_dir):
  config = tiny_config(tmp_path, tfds_dir, epochs=0.5, target_epsilon=5.0,
                       noise_multiplier=None)
  training.train(config)
  names = [n for n, _ in tf.train.list_variables(config.model_dir)]
  assert not [n for n in names if 'warm' in n]
  meta = export.read_metadata(export.resolve_version_dir(config.export_dir))
  assert meta['warm_start'] is None
  with pytest.raises(training.ResumeMismatch,
                     match='--warm_start=mean_embedding: the run in'):
    training.train(dataclasses.replace(config, warm_start='mean_embedding'))


@pytest.mark.parametrize('change,message', [
    (dict(warm_start='dp_merf'), "--warm_start='dp_merf': choose one of"),
    (dict(warm_start_epsilon_share=0.0),
     '--warm_start_epsilon_share=0.0 must be in (0, 1]'),
    (dict(warm_start_epsilon_share=1.5),
     '--warm_start_epsilon_share=1.5 must be in (0, 1]'),
    (dict(warm_start_epsilon_share=1.0, sample_candidates=5),
     '--sample_candidates=5 needs a trained critic'),
    (dict(warm_start_epsilon_share=1.0, noise_multiplier=1.0),
     '--noise_multiplier=1.0: with --warm_start_epsilon_share=1 there is no '
     'DP-SGD phase'),
    (dict(warm_start_steps=0), '--warm_start_steps=0 must be >= 1'),
    (dict(warm_start_features=0), '--warm_start_features=0 must be >= 1'),
    (dict(warm_start_length_scale=0.0),
     '--warm_start_length_scale=0.0 must be > 0'),
    (dict(warm_start_lr=-1.0), '--warm_start_lr=-1.0 must be > 0'),
    (dict(target_epsilon=None, noise_multiplier=1.0),
     '--warm_start=mean_embedding needs --target_epsilon'),
    (dict(strategy='mirrored'),
     '--warm_start=mean_embedding needs --strategy=default'),
])
def test_bad_warm_start_flags_name_the_flag(tmp_path, change, message):
  config = dataclasses.replace(
      config_lib.TrainConfig(model_dir=str(tmp_path / 'm'), target_epsilon=1.0,
                             warm_start='mean_embedding'), **change)
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(
      ')', r'\)')):
    training.train(config)
  assert not os.path.exists(tmp_path / 'm')
