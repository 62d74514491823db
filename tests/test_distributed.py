"""Private training under tf.distribute, on two logical CPU devices.

The device split must happen before TensorFlow runs an op, so the checks run
in subprocesses (through tests/helpers/two_cpus.py), started together to
overlap: distributed_checks.py fits the same models on one device and on two
replicas, once per gradient engine that supports replicas; train.py
--strategy=mirrored runs end to end with the default engine.
"""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from conftest import FASHION_MNIST_DIR
from conftest import REPO_ROOT
from dpgan_tf import export as export_lib
from dpgan_tf import privacy

TWO_CPUS = os.path.join(REPO_ROOT, 'tests', 'helpers', 'two_cpus.py')
# The end-to-end run: 256 examples, expected batch 32, one epoch.
TRAIN_FLAGS = ('--max_train_examples=256', '--batch_size=32', '--epochs=1',
               '--noise_multiplier=1.0', '--delta=1e-5', '--seed=3',
               '--generator_width=8', '--critic_width=8',
               '--generator_ema=0.9')
TRAIN_STEPS = 256 // 32
# Engines that run under a strategy (the jacobian one is refused by config).
ENGINES = ('ghost', 'vectorized')


def _run_all(commands: dict, log_dir) -> None:
  """Runs two-device processes together, each logging to its own file (a
  pipe left unread while waiting on another process could stall it)."""
  processes = {}
  for name, args in commands.items():
    with open(log_dir / f'{name}.log', 'w') as log:
      processes[name] = subprocess.Popen(
          [sys.executable, TWO_CPUS, *args], cwd=REPO_ROOT, stdout=log,
          stderr=subprocess.STDOUT)
  for name, process in processes.items():
    process.wait(timeout=600)
    assert process.returncode == 0, (log_dir / f'{name}.log').read_text()[
        -5000:]


@pytest.fixture(scope='module')
def runs(tmp_path_factory, tfds_dir, fashion_mnist_small):
  del fashion_mnist_small  # Prepares tfds_dir for the training run.
  tmp = tmp_path_factory.mktemp('distributed')
  model_dir, export_dir = str(tmp / 'model'), str(tmp / 'export')
  commands = {e: [os.path.join('tests', 'helpers', 'distributed_checks.py'), e,
                  str(tmp / f'{e}.json')] for e in ENGINES}
  commands['train'] = [
      'train.py', '--strategy=mirrored', '--dataset=fashion_mnist',
      f'--manual_dir={FASHION_MNIST_DIR}', f'--data_dir={tfds_dir}',
      f'--model_dir={model_dir}', f'--export_dir={export_dir}', *TRAIN_FLAGS]
  _run_all(commands, tmp)
  results = {}
  for engine in ENGINES:
    with open(tmp / f'{engine}.json') as f:
      results[engine] = json.load(f)
  return results, model_dir, export_dir


@pytest.fixture(params=ENGINES)
def checks(request, runs):
  return runs[0][request.param]


def test_two_replicas(checks):
  assert checks['replicas'] == 2


def test_noiseless_update_equals_single_device(checks):
  # Odd batches, one smaller than the replica count, one empty: the same
  # weights up to float summation order, identical on both replicas.
  assert checks['max_weight_difference'] < 1e-6
  assert checks['max_replica_difference'] == 0.0


def test_noise_is_added_once_with_the_global_scale(checks):
  # sigma*C / expected batch; per-replica noise would be sqrt(2) larger,
  # noise shrunk by the replica count 2x smaller.
  assert checks['noise_size'] > 10000
  assert checks['noise_std'] == pytest.approx(checks['expected_noise_std'],
                                              rel=0.04)
  assert abs(checks['noise_mean']) < 4 * checks['expected_noise_std'] / (
      checks['noise_size']**0.5)
  assert checks['noise_replica_difference'] == 0.0
  # The very draw one device makes at that step.
  assert checks['single_device_noise_difference'] < 1e-6


def test_accounting_matches_single_device(checks):
  assert checks['critic_steps'] == [5, 5, 5]
  assert checks['generator_steps'] == [5, 5, 5]
  assert checks['mirrored_epsilon'] == checks['single_device_epsilon']


def test_train_py_mirrored_writes_one_checkpoint_and_one_export(runs):
  _, model_dir, export_dir = runs
  indexes = [n for n in os.listdir(model_dir) if n.endswith('.index')]
  assert indexes == [f'ckpt-{TRAIN_STEPS}.index']
  assert sorted(n for n in os.listdir(model_dir)
                if os.path.isdir(os.path.join(model_dir, n))) == ['train']
  assert export_lib.list_versions(export_dir) == [1]
  assert [n for n in os.listdir(export_dir) if n.startswith('.')] == []
  metadata = export_lib.read_metadata(os.path.join(export_dir, '1'))
  assert metadata['critic_steps'] == TRAIN_STEPS
  # What a single-device run with these flags accounts.
  assert metadata['epsilon'] == privacy.compute_epsilon(
      1.0, 32 / 256, TRAIN_STEPS, 1e-5)


@pytest.mark.skipif(bool(tf.config.list_physical_devices('GPU')),
                    reason='a GPU is visible: the script would run')
def test_gpu_script_refuses_cleanly_without_a_gpu(tmp_path):
  result = subprocess.run(
      ['bash', os.path.join('scripts', 'gpu_mirrored.sh')], cwd=REPO_ROOT,
      capture_output=True, text=True,
      env={**os.environ, 'OUT_DIR': str(tmp_path / 'out')})
  assert result.returncode == 2
  assert result.stderr.startswith(
      'scripts/gpu_mirrored.sh: error: TensorFlow sees no GPU here.')
  assert not (tmp_path / 'out').exists()
