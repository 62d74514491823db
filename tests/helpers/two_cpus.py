"""Runs a Python script with the host CPU split into two logical devices.

Usage: python tests/helpers/two_cpus.py SCRIPT [ARGS...]

tf.distribute tests need several devices; two logical CPUs give
MirroredStrategy two replicas on any machine. The split must happen before
TensorFlow runs its first op, hence a separate process and this wrapper.
"""

import os
import runpy
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TensorFlow's default on CPUs with AVX-512 VNNI/BF16, forced here on any
# x86 host: its convolutions fail on an empty batch, and the replicas' slices
# in these runs are empty at times (dpgan_tf must guard them).
os.environ['TF_ENABLE_ONEDNN_OPTS'] = '1'

import tensorflow as tf  # pylint: disable=g-import-not-at-top

NUM_DEVICES = 2


def main():
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_DEVICES)
  script = sys.argv[1]
  sys.argv = sys.argv[1:]
  repo_root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  sys.path.insert(0, repo_root)
  runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
  main()
