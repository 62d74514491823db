"""The devices and hosts a run trains on, and the checks that keep the
workers of a cluster in step.

A multi-worker run is one DP-SGD run split over processes: every worker must
compute the same global step, with the same noise. A worker started with
other flags, or one that cannot see the chief's checkpoints, would silently
train something else, so either is refused on every worker before anything
is written. A worker that dies mid-run stops the others (TensorFlow's
coordination service misses its heartbeat), and starting every worker again
resumes from the last checkpoint.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf

from dpgan_tf import config as config_lib

# Each host may read its own copy of the data; every other flag must be the
# same on every worker.
PER_HOST_FLAGS = frozenset({'data_dir', 'manual_dir'})
# The task types MultiWorkerMirroredStrategy trains with.
TRAINING_TASKS = ('chief', 'worker')
# What a collective raises once the coordination service has marked a peer
# as gone (missed heartbeats) or the peer's connection broke.
_LOST_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
                     tf.errors.DeadlineExceededError)


class ClusterError(ValueError):
  """TF_CONFIG or the workers' flags cannot make one run; says which."""


class WorkerLost(RuntimeError):
  """A worker stopped mid-run; the message says how to resume."""


def _require(condition: bool, message: str) -> None:
  config_lib.require(condition, message, ClusterError)


def read_tf_config(strategy: str) -> Optional[dict]:
  """TF_CONFIG, checked: the cluster a multi_worker run joins, or None.

  Refused when set for another strategy: each process would then train
  alone, and several of them would share one --model_dir.
  """
  raw = os.environ.get('TF_CONFIG', '')
  if strategy != 'multi_worker':
    _require(not raw.strip(), f'TF_CONFIG is set, but --strategy={strategy} '
             'trains in this process alone; pass --strategy=multi_worker '
             'to join the cluster, or unset TF_CONFIG.')
    return None
  _require(bool(raw.strip()), '--strategy=multi_worker needs TF_CONFIG: '
           'the cluster\'s addresses and this worker\'s task, as in '
           '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
           '"task": {"type": "worker", "index": 0}}.')
  try:
    tf_config = json.loads(raw)
  except json.JSONDecodeError as e:
    raise ClusterError(f'TF_CONFIG is not valid JSON ({e}).') from e
  _require(isinstance(tf_config, dict), 'TF_CONFIG must be a JSON object '
           'with "cluster" and "task".')
  _check_cluster(tf_config.get('cluster'))
  _check_task(tf_config.get('task'), tf_config['cluster'])
  return tf_config


def _check_cluster(cluster) -> None:
  _require(isinstance(cluster, dict) and bool(cluster),
           'TF_CONFIG has no "cluster": give every worker\'s host:port, as '
           'in {"worker": ["host1:2222", "host2:2222"]}.')
  for job, addresses in cluster.items():
    _require(job in TRAINING_TASKS, f'TF_CONFIG cluster job "{job}": '
             f'--strategy=multi_worker trains with {TRAINING_TASKS} only.')
    _require(isinstance(addresses, list) and bool(addresses) and all(
        isinstance(a, str) and a.rpartition(':')[2].isdigit()
        for a in addresses), f'TF_CONFIG cluster job "{job}" must list '
             f'host:port addresses, not {addresses!r}.')
  _require(len(cluster.get('chief', [])) <= 1,
           'TF_CONFIG: a cluster has at most one "chief".')


def _check_task(task, cluster: dict) -> None:
  _require(isinstance(task, dict), 'TF_CONFIG has no "task": say which '
           'task this process is, as in {"type": "worker", "index": 0}.')
  kind, index = task.get('type'), task.get('index')
  _require(kind in cluster, f'TF_CONFIG task type {kind!r} is not a job of '
           f'the cluster {sorted(cluster)}.')
  _require(isinstance(index, int) and not isinstance(index, bool) and
           0 <= index < len(cluster[kind]),
           f'TF_CONFIG task index {index!r} is outside the cluster: job '
           f'"{kind}" has {len(cluster[kind])} task(s), indexes 0 to '
           f'{len(cluster[kind]) - 1}.')


def local_tf_configs(workers: int) -> list:
  """The TF_CONFIG of each worker of a cluster on this host's loopback
  interface, on ports free now: to try --strategy=multi_worker on one
  machine (the tests and the scaling benchmark do)."""
  sockets = [socket.socket() for _ in range(workers)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  addresses = [f'127.0.0.1:{s.getsockname()[1]}' for s in sockets]
  for s in sockets:
    s.close()
  return [json.dumps({'cluster': {'worker': addresses},
                      'task': {'type': 'worker', 'index': i}})
          for i in range(workers)]


def make_strategy(c: config_lib.TrainConfig) -> tf.distribute.Strategy:
  """`mirrored` uses every local GPU, or every logical CPU if there is none
  (MirroredStrategy's own default would use one CPU); `multi_worker` joins
  the cluster of TF_CONFIG, and returns once every worker has started with
  the same flags (or exits after --cluster_timeout seconds)."""
  tf_config = read_tf_config(c.strategy)
  if c.strategy == 'mirrored':
    devices = (tf.config.list_logical_devices('GPU') or
               tf.config.list_logical_devices('CPU'))
    return tf.distribute.MirroredStrategy([d.name for d in devices])
  if c.strategy != 'multi_worker':
    return tf.distribute.get_strategy()
  task = tf_config['task']
  logging.info('Joining the cluster as %s %d of %s; waiting for every '
               'worker to start.', task['type'], task['index'],
               tf_config['cluster'])
  with _exit_unless_done_within(
      c.cluster_timeout,
      f'not every worker of the cluster in TF_CONFIG started within '
      f'--cluster_timeout={c.cluster_timeout} seconds: a worker is down, or '
      'stopped at start-up on bad input (see its log). Nothing was written.'):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    check_same_flags(strategy, c)
  return strategy


# Run by the watchdog process (see _exit_unless_done_within): it stops
# watching when its parent exits.
_WATCHDOG = """
import os, sys, time
seconds, message, parent = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
  time.sleep(0.5)
  if os.getppid() != parent:
    sys.exit()
sys.stderr.write(message)
sys.stderr.flush()
os.kill(parent, 9)
"""


@contextlib.contextmanager
def _exit_unless_done_within(seconds: int, message: str):
  """Kills this process, saying why, unless the block finishes in time.

  While it waits for a peer, the main thread is blocked in TensorFlow's
  runtime, holding the interpreter's lock, and neither times out nor stops
  on SIGTERM (TensorFlow catches it for preemption handling): only another
  process can end the wait.
  """
  program = os.path.basename(sys.argv[0])
  watchdog = subprocess.Popen([
      sys.executable, '-c', _WATCHDOG, str(seconds),
      f'{program}: error: {message}\n', str(os.getpid())])
  try:
    yield
  finally:
    watchdog.kill()
    watchdog.wait()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Only the chief writes checkpoints, logs and exports."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  return resolver.task_type == 'chief' or (
      resolver.task_type == 'worker' and resolver.task_id == 0 and
      'chief' not in resolver.cluster_spec().as_dict())


def _gather_from_replicas(strategy: tf.distribute.Strategy,
                          values: list) -> np.ndarray:
  """[replicas, len(values)]: every replica's values, on every worker."""
  local = tf.constant([values], tf.int64)
  per_replica = strategy.experimental_distribute_values_from_function(
      lambda _: local)
  return strategy.gather(per_replica, axis=0).numpy()


def _fingerprint(value) -> int:
  return int.from_bytes(hashlib.sha256(repr(value).encode()).digest()[:7],
                        'big')


def check_same_flags(strategy: tf.distribute.Strategy,
                     c: config_lib.TrainConfig) -> None:
  """Refuses, on every worker, a run whose workers were given different
  flags (PER_HOST_FLAGS apart), naming the first such flag."""
  names = [f.name for f in dataclasses.fields(c)
           if f.name not in PER_HOST_FLAGS]
  everyone = _gather_from_replicas(
      strategy, [_fingerprint(getattr(c, n)) for n in names])
  for name, column in zip(names, everyone.T):
    _require(len(set(column)) == 1, f'--{name} differs between the workers '
             f'of the cluster (this one has {getattr(c, name)!r}): start '
             'every worker with the same flags (only '
             f'{", ".join("--" + f for f in sorted(PER_HOST_FLAGS))} may '
             'differ; --compute_dtype=auto resolves per host, so give '
             'hosts of different kinds float32 or bfloat16).')


def check_same_progress(strategy: tf.distribute.Strategy, model_dir: str,
                        generator_steps: int) -> None:
  """Refuses a run whose workers restored different checkpoints: its
  --model_dir is not on storage that every worker shares."""
  everyone = _gather_from_replicas(strategy, [generator_steps])
  _require(len(set(everyone[:, 0])) == 1, f'--model_dir={model_dir}: the '
           'workers found different checkpoints in it (this one is at '
           f'generator step {generator_steps}, the others at '
           f'{sorted(set(everyone[:, 0].tolist()) - {generator_steps})}); '
           'every worker must see the chief\'s --model_dir on shared '
           'storage.')


@contextlib.contextmanager
def scratch_dir(strategy: tf.distribute.Strategy, model_dir: str):
  """None on the chief; on another worker, where its share of the
  collective saves goes: a directory in the system's temporary directory,
  named after the task and --model_dir so that a worker restarted after a
  crash removes what its predecessor left. Removed when training ends."""
  if is_chief(strategy):
    yield None
    return
  resolver = strategy.cluster_resolver
  run = hashlib.sha256(os.path.abspath(model_dir).encode()).hexdigest()[:12]
  path = os.path.join(tempfile.gettempdir(), f'dpgan-{resolver.task_type}-'
                      f'{resolver.task_id}-{run}')
  shutil.rmtree(path, ignore_errors=True)
  os.makedirs(path)
  try:
    yield path
  finally:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def report_lost_workers(model_dir: str):
  """Turns a collective aborted by a lost peer into WorkerLost, which
  says where the run can resume from."""
  try:
    yield
  except _LOST_PEER_ERRORS as e:
    logging.error('TensorFlow: %s', e)
    latest = tf.train.latest_checkpoint(model_dir)
    raise WorkerLost(
        f'a worker of the cluster stopped ({type(e).__name__}, logged '
        f'above). The last checkpoint is {latest or "none: the run starts over"}'
        '; start every worker again with the same flags to resume from it.'
    ) from e
