"""Multi-worker private training with real worker processes on loopback.

Each `train.py --strategy=multi_worker` process gets its own TF_CONFIG naming
two free 127.0.0.1 ports, as on two hosts that share storage. The runs start
together in one fixture (they overlap on the CPUs): a single-process
reference, an uninterrupted two-worker run, a two-worker run whose non-chief
is killed with SIGKILL and then restarted, and a `mirrored` run (two logical
CPUs) killed and restarted the same way.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import FASHION_MNIST_DIR
from conftest import REPO_ROOT
from dpgan_tf import cluster
from dpgan_tf import export as export_lib
from dpgan_tf import privacy

TWO_CPUS = os.path.join(REPO_ROOT, 'tests', 'helpers', 'two_cpus.py')
EXAMPLES, BATCH = 512, 32
STEPS = EXAMPLES // BATCH  # One epoch.
FLAGS = ('--dataset=fashion_mnist', f'--manual_dir={FASHION_MNIST_DIR}',
         f'--max_train_examples={EXAMPLES}', f'--batch_size={BATCH}',
         '--epochs=1', '--noise_multiplier=1.0', '--delta=1e-5', '--seed=3',
         '--generator_width=8', '--critic_width=8', '--checkpoint_every=4')
# Long enough for a peer to start and trace its step on a busy machine.
TIMEOUT_S = 300


class Job:
  """train.py processes started together, each logging to its own file and
  with its own temporary directory (where a worker's scratch goes)."""

  def __init__(self, root, name, commands, envs):
    self.root = root / name
    self.root.mkdir(parents=True, exist_ok=True)
    self.processes, self.logs, self.tmpdirs = [], [], []
    for i, (command, env) in enumerate(zip(commands, envs)):
      tmpdir = self.root / f'tmp{i}'
      tmpdir.mkdir(exist_ok=True)
      log = self.root / f'worker{i}.{time.monotonic_ns()}.log'
      with open(log, 'w') as f:
        self.processes.append(subprocess.Popen(
            [sys.executable, *command], cwd=REPO_ROOT, stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, 'TMPDIR': str(tmpdir), **env}))
      self.logs.append(log)
      self.tmpdirs.append(tmpdir)

  def wait(self) -> list:
    for process in self.processes:
      try:
        process.wait(timeout=TIMEOUT_S)
      except subprocess.TimeoutExpired:
        for p in self.processes:
          p.kill()
        raise AssertionError(self.output())
    return [p.returncode for p in self.processes]

  def output(self) -> str:
    return '\n'.join(f'--- {log.name}\n{log.read_text()[-4000:]}'
                     for log in self.logs)

  def kill_at_checkpoint(self, model_dir, index: int) -> int:
    """SIGKILLs process `index` once the first checkpoint is written;
    returns the step of the latest checkpoint when it died."""
    while tf.train.latest_checkpoint(model_dir) is None:
      assert self.processes[index].poll() is None, self.output()
      time.sleep(0.05)
    self.processes[index].send_signal(signal.SIGKILL)
    self.processes[index].wait()
    return int(tf.train.latest_checkpoint(model_dir).rsplit('-', 1)[1])


def _workers(root, name, flags, per_worker=((), ())):
  return Job(root, name,
             [('train.py', '--strategy=multi_worker', *flags, *extra)
              for extra in per_worker],
             [{'TF_CONFIG': c} for c in cluster.local_tf_configs(2)])


def _dirs(root, name, tfds_dir):
  return (f'--data_dir={tfds_dir}', f'--model_dir={root / name / "model"}',
          f'--export_dir={root / name / "export"}')


def _generator_weights(model_dir) -> dict:
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  return {n: reader.get_tensor(n) for n, _ in tf.train.list_variables(
      tf.train.latest_checkpoint(model_dir)) if n.startswith('generator/')}


def _max_difference(a: dict, b: dict) -> float:
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[n] - b[n]))) for n in a
             if isinstance(a[n], np.ndarray) and a[n].dtype.kind == 'f')


@pytest.fixture(scope='module')
def runs(tmp_path_factory, tfds_dir, fashion_mnist_small):
  del fashion_mnist_small  # Prepares tfds_dir for the training runs.
  root = tmp_path_factory.mktemp('multi_worker')
  single = Job(root, 'single', [('train.py', *FLAGS,
                                 *_dirs(root, 'single', tfds_dir))], [{}])
  whole = _workers(root, 'whole', (*FLAGS, *_dirs(root, 'whole', tfds_dir)))
  killed_flags = (*FLAGS, *_dirs(root, 'killed', tfds_dir))
  killed = _workers(root, 'killed', killed_flags)
  killed_at = killed.kill_at_checkpoint(root / 'killed' / 'model', index=1)
  killed_time = time.monotonic()
  killed_codes = killed.wait()
  stopped_after_s = time.monotonic() - killed_time
  resumed = _workers(root, 'killed', killed_flags)
  mirrored_flags = ('train.py', '--strategy=mirrored', *FLAGS,
                    *_dirs(root, 'mirrored', tfds_dir))
  mirrored = Job(root, 'mirrored', [(TWO_CPUS, *mirrored_flags)], [{}])
  mirrored_killed_at = mirrored.kill_at_checkpoint(root / 'mirrored' / 'model',
                                                   index=0)
  mirrored_resumed = Job(root, 'mirrored', [(TWO_CPUS, *mirrored_flags)],
                         [{}])
  for job in (single, whole, resumed, mirrored_resumed):
    assert job.wait() == [0] * len(job.processes), job.output()
  return dict(root=root, single=single, whole=whole, killed=killed,
              killed_at=killed_at, killed_codes=killed_codes,
              stopped_after_s=stopped_after_s, resumed=resumed,
              mirrored_killed_at=mirrored_killed_at)


def _metadata(root, name) -> dict:
  export_dir = root / name / 'export'
  assert export_lib.list_versions(str(export_dir)) == [1]
  return export_lib.read_metadata(str(export_dir / '1'))


def test_two_workers_account_and_train_like_one_process(runs):
  root = runs['root']
  single, whole = _metadata(root, 'single'), _metadata(root, 'whole')
  assert whole['critic_steps'] == single['critic_steps'] == STEPS
  assert whole['epsilon'] == single['epsilon'] == privacy.compute_epsilon(
      1.0, BATCH / EXAMPLES, STEPS, 1e-5)
  # Noise once per global step, Poisson sampling over the global data, the
  # global expected batch: the same updates up to float summation order.
  assert _max_difference(_generator_weights(root / 'whole' / 'model'),
                         _generator_weights(root / 'single' / 'model')) < 1e-5


def test_only_the_chief_writes_and_scratch_is_removed(runs):
  root = runs['root'] / 'whole'
  assert sorted(os.listdir(root)) == ['export', 'model', 'tmp0', 'tmp1'] + [
      log.name for log in runs['whole'].logs]
  model = os.listdir(root / 'model')
  assert sorted(n for n in model if os.path.isdir(root / 'model' / n)) == [
      'train']
  assert len(os.listdir(root / 'model' / 'train')) == 1  # One event file.
  assert {n for n in model if n.endswith('.index')} == {
      f'ckpt-{s}.index' for s in (8, 12, 16)}
  assert [n for n in os.listdir(root / 'export') if n != '1'] == []
  # Each worker's temporary directory holds nothing of ours (TensorFlow's
  # autograph writes its generated modules there).
  for tmpdir in runs['whole'].tmpdirs:
    assert [n for n in os.listdir(tmpdir)
            if not n.startswith('__autograph_generated_file')] == []


def test_a_killed_worker_stops_the_job_with_a_clear_message(runs):
  assert runs['killed_at'] < STEPS  # Killed mid-run.
  chief_code, killed_code = runs['killed_codes']
  assert killed_code == -signal.SIGKILL
  assert chief_code == 4, runs['killed'].output()
  assert runs['stopped_after_s'] < 120
  chief_log = runs['killed'].logs[0].read_text()
  assert 'train.py: stopped: a worker of the cluster stopped' in chief_log
  assert 'start every worker again with the same flags' in chief_log


def test_restarting_the_workers_resumes_to_the_uninterrupted_result(runs):
  root = runs['root']
  assert 'Resumed from' in runs['resumed'].logs[0].read_text()
  resumed, whole = _metadata(root, 'killed'), _metadata(root, 'whole')
  assert resumed['critic_steps'] == whole['critic_steps']
  assert resumed['epsilon'] == whole['epsilon']
  assert _max_difference(_generator_weights(root / 'killed' / 'model'),
                         _generator_weights(root / 'whole' / 'model')) < 1e-6
  # The killed worker's scratch is removed by its successor.
  for tmpdir in runs['resumed'].tmpdirs:
    assert [n for n in os.listdir(tmpdir) if n.startswith('dpgan-')] == []


def test_mirrored_killed_and_resumed_ends_like_one_process(runs):
  root = runs['root']
  assert runs['mirrored_killed_at'] < STEPS
  resumed, single = _metadata(root, 'mirrored'), _metadata(root, 'single')
  assert resumed['critic_steps'] == single['critic_steps']
  assert resumed['epsilon'] == single['epsilon']
  assert _max_difference(_generator_weights(root / 'mirrored' / 'model'),
                         _generator_weights(root / 'single' / 'model')) < 1e-5


def test_workers_with_different_flags_are_all_refused(tmp_path, tfds_dir,
                                                       fashion_mnist_small):
  del fashion_mnist_small
  job = _workers(tmp_path, 'mixed', (*FLAGS, *_dirs(tmp_path, 'mixed',
                                                    tfds_dir)),
                 per_worker=((), ('--critic_lr=0.001',)))
  assert job.wait() == [2, 2], job.output()
  for log in job.logs:
    assert '--critic_lr differs between the workers' in log.read_text()
  assert not (tmp_path / 'mixed' / 'model').exists()


def test_a_worker_that_never_starts_ends_the_wait(tmp_path):
  job = Job(tmp_path, 'alone', [(
      'train.py', '--strategy=multi_worker', *FLAGS, '--cluster_timeout=5',
      f'--model_dir={tmp_path / "model"}')],
            [{'TF_CONFIG': cluster.local_tf_configs(2)[0]}])
  assert job.wait() == [-signal.SIGKILL], job.output()
  assert ('train.py: error: not every worker of the cluster in TF_CONFIG '
          'started within --cluster_timeout=5 seconds') in job.output()
  assert not (tmp_path / 'model').exists()


@pytest.mark.parametrize('strategy,tf_config,expected', [
    ('multi_worker', None, '--strategy=multi_worker needs TF_CONFIG'),
    ('multi_worker', '{"cluster": {"worker": ["a:1"]}',
     'TF_CONFIG is not valid JSON'),
    ('multi_worker', {'cluster': {'worker': ['a:1', 'b:1']},
                      'task': {'type': 'worker', 'index': 2}},
     'TF_CONFIG task index 2 is outside the cluster: job "worker" has 2'),
    ('multi_worker', {'cluster': {'worker': ['a:1']},
                      'task': {'type': 'chief', 'index': 0}},
     "TF_CONFIG task type 'chief' is not a job of the cluster"),
    ('multi_worker', {'cluster': {'worker': ['a:1'], 'ps': ['b:1']},
                      'task': {'type': 'worker', 'index': 0}},
     'TF_CONFIG cluster job "ps"'),
    ('multi_worker', {'cluster': {'worker': 'a:1'},
                      'task': {'type': 'worker', 'index': 0}},
     'TF_CONFIG cluster job "worker" must list host:port addresses'),
    ('multi_worker', {'cluster': {'worker': ['a:1']}},
     'TF_CONFIG has no "task"'),
    ('default', {'cluster': {'worker': ['a:1']},
                 'task': {'type': 'worker', 'index': 0}},
     'TF_CONFIG is set, but --strategy=default'),
])
def test_bad_cluster_input_is_named(monkeypatch, strategy, tf_config,
                                    expected):
  if tf_config is None:
    monkeypatch.delenv('TF_CONFIG', raising=False)
  else:
    monkeypatch.setenv('TF_CONFIG', tf_config if isinstance(
        tf_config, str) else json.dumps(tf_config))
  with pytest.raises(cluster.ClusterError, match='^' + expected.replace(
      '(', r'\(').replace('[', r'\[')):
    cluster.read_tf_config(strategy)


def test_a_good_tf_config_is_read(monkeypatch):
  good = {'cluster': {'chief': ['a:1'], 'worker': ['b:1', 'c:1']},
          'task': {'type': 'worker', 'index': 1}}
  monkeypatch.setenv('TF_CONFIG', json.dumps(good))
  assert cluster.read_tf_config('multi_worker') == good


def test_cli_refuses_bad_tf_config_and_writes_nothing(tmp_path):
  model_dir = tmp_path / 'model'
  result = subprocess.run(
      [sys.executable, 'train.py', '--strategy=multi_worker', *FLAGS,
       f'--model_dir={model_dir}'], cwd=REPO_ROOT, capture_output=True,
      text=True, env={**os.environ, 'TF_CONFIG': '{"cluster": '})
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      'train.py: error: TF_CONFIG is not valid JSON')
  assert not model_dir.exists()


def test_workers_that_see_different_checkpoints_are_refused(monkeypatch):
  # Two workers whose --model_dir is not shared storage: one restored step
  # 8, the other found nothing.
  monkeypatch.setattr(cluster, '_gather_from_replicas',
                      lambda strategy, values: np.array([[8], [0]]))
  with pytest.raises(cluster.ClusterError, match='shared storage'):
    cluster.check_same_progress(tf.distribute.get_strategy(), '/m', 8)

