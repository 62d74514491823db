"""Crashes, bad input and divergence: nothing lost, privacy never overspent."""

import dataclasses
import gzip
import os
import random
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import FASHION_MNIST_DIR, REPO_ROOT
from dpgan_tf import data
from dpgan_tf import export
from dpgan_tf import training
from test_training import tiny_config

_TINY_FLAGS = ['--dataset=fashion_mnist', f'--manual_dir={FASHION_MNIST_DIR}',
               '--max_train_examples=256', '--batch_size=32', '--delta=1e-4',
               '--latent_dim=16', '--generator_width=8', '--critic_width=8',
               '--log_every=4', '--sample_every=4']
# train.py on the tiny run; callers add their own flags.
_TRAIN_CLI = [sys.executable, 'train.py', *_TINY_FLAGS]


def _train_cli(*flags, **kwargs):
  return subprocess.run([*_TRAIN_CLI, *flags], cwd=REPO_ROOT,
                        capture_output=True, text=True, **kwargs)


def _listing(directory):
  """Every file under directory with its size and mtime."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      out[os.path.relpath(path, directory)] = (os.path.getsize(path),
                                               os.path.getmtime(path))
  return out


def _export_tensors(export_dir):
  path = os.path.join(export.resolve_version_dir(export_dir), 'variables',
                      'variables')
  reader = tf.train.load_checkpoint(path)
  tensors = {n: reader.get_tensor(n) for n, _ in tf.train.list_variables(path)}
  return {n: t for n, t in tensors.items()
          if isinstance(t, np.ndarray) and t.dtype.kind == 'f'}


def _run_and_kill_at(args, kill_at, delay):
  """Starts training, SIGKILLs it after the first generator step it logs for
  which kill_at(step, steps logged by this attempt) holds, `delay` times the
  time its last step took later.

  Returns whether it was killed (False if it finished first). Killing on a
  logged step, with a delay in steps, not seconds, puts the kill at the same
  point of training on any machine (the tiny run's steps take milliseconds
  on a fast one), and counting the attempt's own steps kills each attempt
  however far the one before got; the random delay moves the kill across
  the step, the checkpoint write and the export.
  """
  proc = subprocess.Popen([*_TRAIN_CLI, *args], cwd=REPO_ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  logged, last = 0, time.monotonic()
  for line in proc.stderr:
    match = re.search(r' step (\d+)/', line)
    if not match:
      continue
    logged += 1
    now = time.monotonic()
    step_time, last = now - last, now
    if logged > 1 and kill_at(int(match.group(1)), logged):
      time.sleep(delay * step_time)
      proc.kill()  # SIGKILL: no cleanup runs
      proc.wait()
      return True
  proc.wait()
  return False


def test_kill_9_at_random_points_then_rerun_equals_uninterrupted(
    tmp_path, tfds_dir, fashion_mnist_small):
  del fashion_mnist_small  # prepared: runs start in seconds

  def flags(name):
    return [f'--data_dir={tfds_dir}',
            f'--model_dir={tmp_path / name / "m"}',
            f'--export_dir={tmp_path / name / "e"}', '--epochs=2',
            '--checkpoint_every=2', '--log_every=1', '--target_epsilon=8',
            '--seed=3']

  # The uninterrupted run goes alongside the killed attempts (the kills are
  # placed by logged steps, not by time).
  with open(tmp_path / 'straight.log', 'w') as log:
    straight = subprocess.Popen(
        [*_TRAIN_CLI, *flags('straight')], cwd=REPO_ROOT,
        stdout=subprocess.PIPE, stderr=log, text=True)
  rng = random.Random(20261130)
  # Two attempts killed a few steps after they start (from the last
  # checkpoint of the one before), then one at the end of training, around
  # the export.
  kill_points = [lambda _, logged, n=rng.randint(2, 4): logged == n
                 for _ in range(2)] + [lambda step, _: step == 16]
  kills = [_run_and_kill_at(flags('killed'), kill_at, rng.uniform(0, 2))
           for kill_at in kill_points]
  assert sum(kills) >= 2
  resumed = _train_cli(*flags('killed'), check=True)
  straight_stdout, _ = straight.communicate(timeout=600)
  assert straight.returncode == 0, (tmp_path / 'straight.log').read_text()
  final_line = [l for l in resumed.stdout.splitlines()
                if l.startswith('Final epsilon')]
  assert final_line and final_line == [l for l in straight_stdout.splitlines()
                                       if l.startswith('Final epsilon')]
  a_meta = export.latest_metadata(str(tmp_path / 'straight' / 'e'))
  b_meta = export.latest_metadata(str(tmp_path / 'killed' / 'e'))
  assert a_meta['epsilon'] == b_meta['epsilon'] <= 8
  assert a_meta['critic_steps'] == b_meta['critic_steps'] == 16
  a, b = (_export_tensors(str(tmp_path / d / 'e')) for d in ('straight',
                                                            'killed'))
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)
  assert not [n for n in os.listdir(tmp_path / 'killed' / 'e')
              if n.startswith('.')]


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, tfds_dir):
  tmp = tmp_path_factory.mktemp('finished')
  config = tiny_config(tmp, tfds_dir)
  training.train(config)
  return config


_BAD_VALUES = [
    (dict(target_epsilon=0.0), '--target_epsilon=0.0 must be > 0'),
    (dict(target_epsilon=-1.0), '--target_epsilon=-1.0 must be > 0'),
    (dict(delta=0.0), '--delta=0.0 must be in'),
    (dict(delta=0.01), '--delta: the run in'),
    (dict(batch_size=1000), '--batch_size: the run in'),
    (dict(batch_size=0), '--batch_size=0 must be >= 1'),
    (dict(num_microbatches=5, sampling='shuffle'),
     '--num_microbatches=5 must divide --batch_size=32'),
    (dict(num_microbatches=4), 'needs fixed-size batches'),
    (dict(noise_multiplier=1.5), '--noise_multiplier'),
    (dict(l2_norm_clip=3.0), '--l2_norm_clip'),
    (dict(sampling='shuffle'), '--sampling'),
    (dict(dataset='imagenet'), "--dataset='imagenet' is not supported"),
    (dict(image_size=100), '--image_size=100: the networks build for'),
    (dict(image_channels=2), '--image_channels=2: choose one of'),
    (dict(celeb_a_attribute='Tall'), "--celeb_a_attribute='Tall': choose"),
    (dict(generator_ema=1.0), '--generator_ema=1.0 must be in [0, 1)'),
    (dict(critic_beta_1=1.0), '--critic_beta_1=1.0 must be in [0, 1)'),
    (dict(n_generator=0), '--n_generator=0 must be >= 1'),
    (dict(sample_candidates=0), '--sample_candidates=0 must be >= 1'),
    (dict(fake_gradient='mixed'), "--fake_gradient='mixed': choose one of"),
    (dict(generator_upsampling='bilinear'),
     "--generator_upsampling='bilinear': choose one of"),
    (dict(generator_upsampling='resize'),
     "--generator_upsampling: the run in"),
    (dict(generator_width=16), '--generator_width: the run in'),
    (dict(critic_width=16), '--critic_width: the run in'),
    (dict(critic_norm='batch'), "--critic_norm='batch': choose one of"),
    (dict(critic_norm='layer'), '--critic_norm: the run in'),
    (dict(latent_dim=8), '--latent_dim: the run in'),
    (dict(fake_gradient='public', loss='wgan_gp'),
     '--fake_gradient=public does not work with --loss=wgan_gp'),
    (dict(fake_gradient='public', grad_engine='jacobian'),
     '--fake_gradient=public needs --grad_engine=ghost or vectorized'),
    (dict(profile_steps='3,2'), "--profile_steps='3,2' must be"),
    (dict(profile_steps='0,2'), "--profile_steps='0,2' must be"),
    (dict(profile_steps='5'), "--profile_steps='5' must be"),
    (dict(profile_steps='a,b'), "--profile_steps='a,b' must be"),
    (dict(compute_dtype='float16'), "--compute_dtype='float16': choose one of"),
]


@pytest.mark.parametrize('change,message', _BAD_VALUES)
def test_bad_values_name_the_flag_and_harm_nothing(finished_run, change,
                                                   message):
  before = _listing(finished_run.model_dir)
  exports_before = _listing(finished_run.export_dir)
  config = dataclasses.replace(finished_run, **change)
  with pytest.raises(ValueError, match=re.escape(message)):
    training.train(config)
  assert _listing(finished_run.model_dir) == before
  assert _listing(finished_run.export_dir) == exports_before


def test_delta_must_be_below_one_over_n(tmp_path, tfds_dir):
  for delta in (1 / 256, 0.01):
    with pytest.raises(ValueError, match=re.escape(
        f'--delta={delta} must be below 1/N = 0.00391 (N=256')):
      training.train(tiny_config(tmp_path, tfds_dir, delta=delta))
  assert not (tmp_path / 'model').exists()


def test_batch_larger_than_the_data_is_refused(tmp_path, tfds_dir):
  with pytest.raises(ValueError, match=re.escape(
      '--batch_size=1000 is larger than the training set (256 examples)')):
    training.train(tiny_config(tmp_path, tfds_dir, batch_size=1000))
  assert not (tmp_path / 'model').exists()


@pytest.mark.parametrize('flags,message', [
    (['--dataset=imagenet'], '--dataset'),
    (['--target_epsilon=0'], '--target_epsilon=0.0 must be > 0'),
    (['--l2_norm_clip=3'], '--l2_norm_clip'),
])
def test_cli_exits_nonzero_with_the_message_and_harms_nothing(
    finished_run, flags, message):
  """train.py turns the same errors into one line on stderr and exit 2."""
  before = _listing(finished_run.model_dir)
  result = _train_cli(f'--data_dir={finished_run.data_dir}',
                      f'--model_dir={finished_run.model_dir}',
                      f'--export_dir={finished_run.export_dir}',
                      '--noise_multiplier=1.0', '--epochs=1', *flags)
  assert result.returncode != 0
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
  assert _listing(finished_run.model_dir) == before


@pytest.mark.parametrize('which,flag', [('model_dir', '--model_dir'),
                                        ('export_dir', '--export_dir')])
def test_file_or_unwritable_output_dirs_are_rejected(tmp_path, tfds_dir, which,
                                                     flag):
  a_file = tmp_path / 'a_file'
  a_file.write_text('keep me')
  with pytest.raises(ValueError, match=f'{flag}=.* is a file'):
    training.train(tiny_config(tmp_path, tfds_dir, **{which: str(a_file)}))
  assert a_file.read_text() == 'keep me'
  # /proc accepts no new files, even from root (who ignores permission bits).
  with pytest.raises(ValueError, match=f'{flag}=.* is not writable'):
    training.train(tiny_config(tmp_path, tfds_dir,
                               **{which: '/proc/dpgan_test/out'}))


@pytest.mark.skipif(os.geteuid() == 0, reason='root ignores permission bits')
def test_read_only_model_dir_is_rejected(tmp_path, tfds_dir):
  read_only = tmp_path / 'ro'
  read_only.mkdir(mode=0o500)
  with pytest.raises(ValueError, match='--model_dir=.* is not writable'):
    training.train(tiny_config(tmp_path, tfds_dir, model_dir=str(read_only)))


def _copy_manual_dir(tmp_path):
  manual = tmp_path / 'raw'
  shutil.copytree(FASHION_MNIST_DIR, manual)
  return manual


@pytest.mark.parametrize('damage,expected', [
    ('missing', 'is missing'),
    ('empty', 'is empty'),
    ('not_gzip', 'is empty or corrupt'),
    ('truncated_gzip', 'is empty or corrupt'),
    ('short_data', 'is truncated or corrupt'),
    ('not_idx', 'is not an IDX uint8 file'),
])
def test_damaged_manual_dir_names_the_file(tmp_path, damage, expected):
  manual = _copy_manual_dir(tmp_path)
  target = manual / 'train-labels-idx1-ubyte.gz'
  raw = gzip.open(target).read()
  if damage == 'missing':
    target.unlink()
  elif damage == 'empty':
    target.write_bytes(b'')
  elif damage == 'not_gzip':
    target.write_bytes(b'this is not gzip at all')
  elif damage == 'truncated_gzip':
    target.write_bytes(target.read_bytes()[:100])
  elif damage == 'short_data':
    target.write_bytes(gzip.compress(raw[:-10]))
  else:
    target.write_bytes(gzip.compress(b'\x12\x34' + raw[2:]))
  with pytest.raises(data.DataError, match='--manual_dir') as error:
    data.load_split('fashion_mnist', 'train', str(tmp_path / 'tfds'),
                    str(manual))
  assert expected in str(error.value)
  assert str(target) in str(error.value)
  assert not (tmp_path / 'tfds').exists()


def test_cli_rejects_a_damaged_or_empty_manual_dir(tmp_path):
  (tmp_path / 'raw').mkdir()
  result = _train_cli(f'--data_dir={tmp_path / "tfds"}',
                      f'--manual_dir={tmp_path / "raw"}',
                      f'--model_dir={tmp_path / "m"}', '--target_epsilon=5')
  assert result.returncode == 2
  assert '--manual_dir' in result.stderr and 'is missing' in result.stderr
  assert not (tmp_path / 'm').exists()


def test_divergence_stops_and_keeps_only_finite_checkpoints(tmp_path,
                                                            tfds_dir):
  exploding = tiny_config(tmp_path, tfds_dir, epochs=3, checkpoint_every=1,
                          critic_lr=1e30, generator_lr=1e30,
                          loss='wasserstein', critic_weight_clip=1e30)
  with pytest.raises(training.callbacks_lib.TrainingDiverged,
                     match='non-finite'):
    training.train(exploding)
  assert not os.path.exists(exploding.export_dir)
  latest = tf.train.latest_checkpoint(exploding.model_dir)
  if latest is None:
    return  # the very first step diverged: nothing good to keep
  reader = tf.train.load_checkpoint(latest)
  for name, _ in tf.train.list_variables(latest):
    value = reader.get_tensor(name)
    if isinstance(value, np.ndarray) and value.dtype.kind == 'f':
      assert np.isfinite(value).all(), name
  # The kept ledger counts exactly the kept steps.
  kept = training.read_saved_ledger(exploding.model_dir).as_dict()
  assert kept['critic_steps'] == reader.get_tensor(
      'generator_steps/.ATTRIBUTES/VARIABLE_VALUE') < 24
