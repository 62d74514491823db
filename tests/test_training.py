"""End-to-end training runs on a few hundred Fashion-MNIST examples."""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant
import numpy as np
import pytest
import tensorflow as tf

from conftest import FASHION_MNIST_DIR, REPO_ROOT
from dpgan_tf import callbacks as callbacks_lib
from dpgan_tf import config as config_lib
from dpgan_tf import export
from dpgan_tf import networks
from dpgan_tf import training


def tiny_config(tmp_path, tfds_dir, **overrides):
  """256 examples, batch 32: 8 critic steps per epoch, small networks."""
  values = dict(
      dataset='fashion_mnist', manual_dir=FASHION_MNIST_DIR,
      data_dir=tfds_dir, model_dir=str(tmp_path / 'model'),
      export_dir=str(tmp_path / 'export'), max_train_examples=256,
      batch_size=32, epochs=1, delta=1e-4, noise_multiplier=1.0, seed=11,
      latent_dim=16, generator_width=8, critic_width=8, checkpoint_every=3,
      sample_every=4, log_every=4)
  values.update(overrides)
  return config_lib.TrainConfig(**values)


def _weights(model_dir):
  reader = tf.train.load_checkpoint(model_dir)
  return {name: reader.get_tensor(name)
          for name, _ in tf.train.list_variables(model_dir)
          if name.startswith(('generator/', 'critic/', 'generator_ema/'))}


@pytest.mark.parametrize('critic_beta_1,expected', [(None, 0.5), (0.9, 0.9)])
def test_critic_beta_1_sets_the_critic_optimizer_alone(critic_beta_1,
                                                        expected):
  c = config_lib.TrainConfig(beta_1=0.5, beta_2=0.99, critic_lr=1e-3,
                             generator_lr=2e-3, critic_beta_1=critic_beta_1)
  critic_opt, generator_opt = training.make_optimizers(
      c, 1.2, tf.Variable([0, 0], dtype=tf.int64))
  critic, generator = critic_opt.get_config(), generator_opt.get_config()
  assert (critic['beta_1'], critic['beta_2'], critic['learning_rate']) == (
      pytest.approx(expected), pytest.approx(0.99), pytest.approx(1e-3))
  assert (generator['beta_1'], generator['learning_rate']) == (
      pytest.approx(0.5), pytest.approx(2e-3))
  assert critic['global_state'] == {'l2_norm_clip': 1.0,
                                    'stddev': pytest.approx(1.2)}


@pytest.mark.parametrize('fake_gradient,upsampling', [
    ('paired', 'transposed'), ('public', 'transposed'), ('paired', 'resize')])
def test_resume_equals_uninterrupted(tmp_path, tfds_dir, fake_gradient,
                                     upsampling):
  # The moving average must resume too; public fakes are keyed by the step.
  ema = dict(generator_ema=0.9, fake_gradient=fake_gradient,
             generator_upsampling=upsampling)
  straight = training.train(tiny_config(tmp_path / 'a', tfds_dir, epochs=2,
                                        **ema))
  first = training.train(tiny_config(tmp_path / 'b', tfds_dir, epochs=1,
                                     **ema))
  assert first.critic_steps == 8
  resumed = training.train(tiny_config(tmp_path / 'b', tfds_dir, epochs=2,
                                       **ema))
  assert straight.critic_steps == resumed.critic_steps == 16
  assert straight.epsilon == resumed.epsilon
  a, b = _weights(str(tmp_path / 'a' / 'model')), _weights(
      str(tmp_path / 'b' / 'model'))
  assert a.keys() == b.keys() and len(a) > 4
  assert any(name.startswith('generator_ema/') for name in a)
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)


def test_same_seed_same_model_other_seed_differs(tmp_path, tfds_dir):
  runs = [training.train(tiny_config(tmp_path / d, tfds_dir, seed=s))
          for d, s in (('a', 5), ('b', 5), ('c', 6))]
  assert runs[0].critic_steps == 8
  a, b, c = (_weights(str(tmp_path / d / 'model')) for d in 'abc')
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  assert any(not np.array_equal(a[n], c[n]) for n in a)


def test_export_metadata_matches_independent_accounting(tmp_path, tfds_dir):
  config = tiny_config(tmp_path, tfds_dir, noise_multiplier=None,
                       target_epsilon=5.0, epochs=2)
  result = training.train(config)
  meta = export.read_metadata(export.resolve_version_dir(config.export_dir))
  assert meta['critic_steps'] == result.critic_steps == 16
  assert meta['sampling_rate'] == 32 / 256
  assert meta['sampling'] == 'poisson' and meta['accountant'] == 'rdp'
  accountant = rdp_privacy_accountant.RdpAccountant()
  accountant.compose(dp_accounting.PoissonSampledDpEvent(
      32 / 256, dp_accounting.GaussianDpEvent(meta['noise_multiplier'])), 16)
  assert meta['epsilon'] == pytest.approx(accountant.get_epsilon(1e-4),
                                          rel=1e-9)
  assert meta['epsilon'] <= 5.0
  # sigma was calibrated: a little less noise would overspend.
  accountant = rdp_privacy_accountant.RdpAccountant()
  accountant.compose(dp_accounting.PoissonSampledDpEvent(
      32 / 256, dp_accounting.GaussianDpEvent(
          meta['noise_multiplier'] * 0.98)), 16)
  assert accountant.get_epsilon(1e-4) > 5.0
  for key in ('dataset', 'image_shape', 'num_classes', 'latent_dim', 'delta',
              'l2_norm_clip', 'batch_size', 'tensorflow_version',
              'tensorflow_privacy_version'):
    assert key in meta
  assert meta['image_shape'] == [28, 28, 1] and meta['latent_dim'] == 16


def test_budget_exhaustion_stop_rerun_and_raise(tmp_path, tfds_dir):
  base = dict(noise_multiplier=0.8, epochs=4)
  budget = 3.0
  first = training.train(tiny_config(tmp_path, tfds_dir, target_epsilon=budget,
                                     **base))
  assert first.stopped_by_budget and 0 < first.critic_steps < 32
  assert first.epsilon <= budget
  assert training.privacy.compute_epsilon(0.8, 32 / 256,
                                          first.critic_steps + 1,
                                          1e-4) > budget
  again = training.train(tiny_config(tmp_path, tfds_dir, target_epsilon=budget,
                                     **base))
  assert again.critic_steps == first.critic_steps
  assert 'Nothing to train' in again.message and 'budget' in again.message
  assert again.export_path is None  # the export already holds this model
  more = training.train(tiny_config(tmp_path, tfds_dir, target_epsilon=2 *
                                    budget, **base))
  assert more.critic_steps > first.critic_steps
  assert more.epsilon == pytest.approx(training.privacy.compute_epsilon(
      0.8, 32 / 256, more.critic_steps, 1e-4))
  assert len(export.list_versions(str(tmp_path / 'export'))) == 2


@pytest.mark.parametrize('change,flag', [
    (dict(l2_norm_clip=2.0), '--l2_norm_clip'),
    (dict(noise_multiplier=1.5), '--noise_multiplier'),
    (dict(delta=1e-5), '--delta'),
    (dict(sampling='shuffle'), '--sampling'),
    (dict(batch_size=16), '--batch_size'),
    (dict(dataset='mnist', manual_dir=None), '--dataset'),  # before loading
    (dict(generator_ema=0.9), '--generator_ema'),
])
def test_resume_with_other_privacy_flags_is_refused(tmp_path, tfds_dir,
                                                    change, flag,
                                                    resumable_run):
  model_dir, before = resumable_run
  config = tiny_config(tmp_path, tfds_dir, model_dir=model_dir, **change)
  with pytest.raises(training.ResumeMismatch, match=flag):
    training.train(config)
  assert _listing(model_dir) == before


# A valid value other than tiny_config's for every flag a resume must keep.
_OTHER_COMPUTATION = {
    'dataset': dict(dataset='mnist', manual_dir=None),
    'max_train_examples': dict(max_train_examples=200),
    'image_size': dict(image_size=32),
    'image_channels': dict(image_channels=3),
    'celeb_a_attribute': dict(celeb_a_attribute='Smiling'),
    'delta': dict(delta=1e-5),
    'l2_norm_clip': dict(l2_norm_clip=2.0),
    'batch_size': dict(batch_size=16),
    'num_microbatches': dict(num_microbatches=32),
    'sampling': dict(sampling='shuffle'),
    'grad_engine': dict(grad_engine='vectorized'),
    'chunk_size': dict(chunk_size=64),
    'n_critic': dict(n_critic=2),
    'n_generator': dict(n_generator=2),
    'loss': dict(loss='wgan_gp'),
    'fake_gradient': dict(fake_gradient='public'),
    'gp_weight': dict(gp_weight=5.0),
    'critic_weight_clip': dict(critic_weight_clip=0.01),
    'latent_dim': dict(latent_dim=8),
    'generator_width': dict(generator_width=16),
    'generator_upsampling': dict(generator_upsampling='resize'),
    'critic_width': dict(critic_width=16),
    'critic_norm': dict(critic_norm='layer'),
    'compute_dtype': dict(compute_dtype='bfloat16'),
    'generator_lr': dict(generator_lr=1e-4),
    'critic_lr': dict(critic_lr=1e-4),
    'beta_1': dict(beta_1=0.0),
    'beta_2': dict(beta_2=0.99),
    'critic_beta_1': dict(critic_beta_1=0.9),
    'strategy': dict(strategy='mirrored'),
    'warm_start': dict(warm_start='mean_embedding', target_epsilon=5.0),
    'warm_start_epsilon_share': dict(warm_start_epsilon_share=0.5),
    'warm_start_steps': dict(warm_start_steps=10),
    'warm_start_features': dict(warm_start_features=100),
    'warm_start_length_scale': dict(warm_start_length_scale=2.0),
    'warm_start_lr': dict(warm_start_lr=1e-4),
}


def test_every_flag_is_either_free_or_checked_on_resume():
  """A new flag must be put on one side of the rule: the table above holds
  a value for every checked flag, and nothing free is checked."""
  assert set(_OTHER_COMPUTATION) == set(config_lib.resume_checked_flags())
  assert not config_lib.RESUME_FREE_FLAGS & set(_OTHER_COMPUTATION)
  names = {f.name for f in dataclasses.fields(config_lib.TrainConfig)}
  assert config_lib.RESUME_FREE_FLAGS <= names


@pytest.mark.parametrize('flag', sorted(_OTHER_COMPUTATION))
def test_resume_that_would_compute_otherwise_is_refused_naming_the_flag(
    tmp_path, tfds_dir, flag, resumable_run):
  """Noise is keyed by (seed, step): a resume replays noise, so a flag that
  changes what a critic step computes is refused, before anything changes."""
  model_dir, before = resumable_run
  config = tiny_config(tmp_path, tfds_dir, model_dir=model_dir,
                       **_OTHER_COMPUTATION[flag])
  with pytest.raises(training.ResumeMismatch, match=f'--{flag}'):
    training.train(config)
  assert _listing(model_dir) == before


def test_auto_compute_dtype_is_recorded_resolved_and_checked_on_resume(
    tmp_path, tfds_dir, monkeypatch):
  """--compute_dtype=auto is recorded as what it resolved to, and resumes
  only where it resolves the same: another host's arithmetic would replay
  the noise on other gradients."""
  monkeypatch.setattr(networks, '_has_bf16_kernels', lambda: False)
  config = tiny_config(tmp_path, tfds_dir, compute_dtype='auto',
                       max_train_examples=64, export_dir=None)
  training.train(config)
  assert config_lib.read_run_config(config.model_dir)['compute_dtype'] == (
      'float32')
  before = _listing(config.model_dir)
  monkeypatch.setattr(networks, '_has_bf16_kernels', lambda: True)
  with pytest.raises(training.ResumeMismatch, match='--compute_dtype'):
    training.train(dataclasses.replace(config, epochs=2))
  assert _listing(config.model_dir) == before


def _listing(directory):
  return {name: os.path.getsize(os.path.join(directory, name))
          for name in sorted(os.listdir(directory))}


@pytest.fixture(scope='module')
def resumable_run(tmp_path_factory, tfds_dir):
  tmp = tmp_path_factory.mktemp('resumable')
  config = tiny_config(tmp, tfds_dir, export_dir=None)
  training.train(config)
  return config.model_dir, _listing(config.model_dir)


def test_tensorboard_has_privacy_losses_and_samples(tmp_path, tfds_dir):
  config = tiny_config(tmp_path, tfds_dir, nonprivate_diagnostics=True,
                       profile_steps='2,3')
  training.train(config)
  traces = glob.glob(os.path.join(config.model_dir, 'nonprivate', 'profile',
                                  'plugins', 'profile', '*', '*.xplane.pb'))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
  summary = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'benchmarks',
                                    'profile_summary.py'),
       config.model_dir, '--steps=2'],
      capture_output=True, text=True, check=True, timeout=120)
  figures = json.loads(summary.stdout.strip().splitlines()[-1])
  assert figures['op_ms_per_step'] > 0
  assert figures['share_critic_forward'] > 0
  assert figures['share_critic_gradient'] > 0
  tags = set()
  log_dir = os.path.join(config.model_dir, 'train')
  for name in os.listdir(log_dir):
    for event in tf.compat.v1.train.summary_iterator(
        os.path.join(log_dir, name)):
      tags.update(v.tag for v in event.summary.value)
  assert {'privacy/epsilon', 'loss/generator_loss', 'loss/critic_loss_fake',
          'speed/examples_per_sec', 'samples/per_class',
          'nonprivate/wasserstein_estimate', 'nonprivate/critic_loss',
          'nonprivate/clipped_fraction'} <= tags


_LOAD_EXPORT = '''
import json, sys
import numpy as np, tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
labels = tf.constant([0, 3, 7, 9], tf.int32)
a = model.signatures['generate'](labels=labels, seed=tf.constant(5, tf.int64))
b = model.signatures['generate'](labels=labels, seed=tf.constant(5, tf.int64))
c = model.signatures['serving_default'](noise=tf.random.normal([4, 16]),
                                        labels=labels)
out = {k: [v['images'].shape.as_list(), float(tf.reduce_min(v['images'])),
           float(tf.reduce_max(v['images']))] for k, v in (('gen', a),
                                                          ('serve', c))}
out['deterministic'] = bool(np.array_equal(a['images'], b['images']))
print(json.dumps(out))
'''


def test_export_loads_in_a_fresh_process_and_logs_stay_private(tmp_path, tfds_dir):
  config = tiny_config(tmp_path, tfds_dir)
  result = training.train(config)
  assert result.export_path == os.path.join(config.export_dir, '1')
  out = subprocess.run([sys.executable, '-c', _LOAD_EXPORT,
                        result.export_path], capture_output=True, text=True,
                       check=True)
  report = json.loads(out.stdout.strip().splitlines()[-1])
  for key in ('gen', 'serve'):
    shape, low, high = report[key]
    assert shape == [4, 28, 28, 1]
    assert 0.0 <= low <= high <= 1.0
  assert report['deterministic']
  # Without --nonprivate_diagnostics nothing outside the guarantee is logged.
  log_dir = os.path.join(config.model_dir, 'train')
  for name in os.listdir(log_dir):
    for event in tf.compat.v1.train.summary_iterator(
        os.path.join(log_dir, name)):
      assert not any(v.tag.startswith('nonprivate/')
                     for v in event.summary.value)
  assert os.path.getsize(os.path.join(config.model_dir, 'samples.png')) > 0
  assert not os.path.exists(os.path.join(config.model_dir, 'nonprivate'))


@pytest.mark.parametrize('first,last,resumed_at,traced', [
    (2, 3, 0, [2, 3]), (4, 4, 0, [4]), (2, 4, 3, [4]), (2, 3, 5, []),
    (3, 5, 0, [3, 4, 5]), (5, 9, 0, [5, 6])])
def test_profile_steps_traces_exactly_those_generator_steps(
    monkeypatch, first, last, resumed_at, traced):
  """One trace over steps first..last, also when a resume starts inside the
  range, across the Keras epochs of training.fit (2 steps each here), and
  ending with the run's last step (6)."""
  events = []
  monkeypatch.setattr(tf.profiler.experimental, 'start',
                      lambda log_dir: events.append(('start', log_dir)))
  monkeypatch.setattr(tf.profiler.experimental, 'stop',
                      lambda: events.append(('stop',)))
  model = tf.keras.Model()
  model.generator_steps = tf.Variable(resumed_at, dtype=tf.int64)
  callback = callbacks_lib.ProfileSteps('/trace', first, last, 6)
  callback.set_model(model)
  for _ in range(resumed_at, 6):
    callback.on_train_batch_begin(0)
    events.append(('step', int(model.generator_steps.numpy()) + 1))
    model.generator_steps.assign_add(1)
    callback.on_train_batch_end(0)
    if model.generator_steps.numpy() % 2 == 0:
      callback.on_train_end()
  if not traced:
    assert not any(event[0] != 'step' for event in events)
    return
  start = events.index(('start', '/trace'))
  stop = events.index(('stop',))
  assert [e[1] for e in events[start:stop] if e[0] == 'step'] == traced
  assert events.count(('start', '/trace')) == events.count(('stop',)) == 1


def test_changing_sample_candidates_reexports_without_training(tmp_path,
                                                              tfds_dir):
  """A finished run gets a new export version for another
  --sample_candidates, with the same steps, epsilon and checkpoints."""
  first = training.train(tiny_config(tmp_path, tfds_dir))
  checkpoints = _weights(str(tmp_path / 'model'))
  again = training.train(tiny_config(tmp_path, tfds_dir, sample_candidates=3))
  assert again.export_path == os.path.join(str(tmp_path / 'export'), '2')
  assert (again.critic_steps, again.epsilon) == (first.critic_steps,
                                                 first.epsilon)
  before, after = (export.read_metadata(p) for p in (first.export_path,
                                                     again.export_path))
  assert (before['sample_candidates'], after['sample_candidates']) == (1, 3)
  assert {k: v for k, v in before.items() if k != 'sample_candidates'} == {
      k: v for k, v in after.items() if k != 'sample_candidates'}
  later = _weights(str(tmp_path / 'model'))
  assert checkpoints.keys() == later.keys()
  assert all(np.array_equal(checkpoints[k], later[k]) for k in checkpoints)
  # The same value again: nothing new to export.
  assert training.train(tiny_config(tmp_path, tfds_dir,
                                    sample_candidates=3)).export_path is None


def test_export_holds_the_generator_moving_average(tmp_path, tfds_dir):
  config = tiny_config(tmp_path, tfds_dir, generator_ema=0.9)
  result = training.train(config)
  saved = {n: v for n, v in _weights(config.model_dir).items()
           if '.OPTIMIZER_SLOT' not in n}  # Adam's slots sit under weights
  average = [v for n, v in saved.items() if n.startswith('generator_ema/')]
  last = [v for n, v in saved.items() if n.startswith('generator/')]
  exported = [v.numpy() for v in
              tf.saved_model.load(result.export_path).generator.variables]
  assert len(average) == len(last) == len(exported)

  def exported_has(array):
    return any(e.shape == array.shape and np.array_equal(e, array)
               for e in exported)

  assert all(exported_has(a) for a in average)
  assert not all(exported_has(w) for w in last)
  metadata = export.read_metadata(result.export_path)
  assert metadata['generator_ema'] == 0.9
