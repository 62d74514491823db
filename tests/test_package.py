"""Importing dpgan_tf turns oneDNN's CPU kernels on for train.py and eval.py.

TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when it is first imported, so
what matters is the entry points' import order and that a user's own
setting wins; each case runs an entry point in a fresh interpreter.
"""

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT  # pylint: disable=g-bad-import-order
import dpgan_tf  # pylint: disable=g-bad-import-order

pytestmark = pytest.mark.skipif(
    not dpgan_tf.X86_HOST,
    reason='dpgan_tf sets the oneDNN default on x86 hosts only')

# Runs SCRIPT --helpshort (its imports, then absl prints the flags and
# exits), then asks TensorFlow whether oneDNN is on.
_PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], '--helpshort']
try:
  runpy.run_path(sys.argv[0], run_name='__main__')
except SystemExit:
  pass
from tensorflow.python.util import _pywrap_util_port
print('onednn', _pywrap_util_port.IsMklEnabled())
"""


def _onednn_enabled_in(script, setting):
  env = dict(os.environ)
  env.pop('TF_ENABLE_ONEDNN_OPTS', None)
  if setting is not None:
    env['TF_ENABLE_ONEDNN_OPTS'] = setting
  proc = subprocess.run([sys.executable, '-c', _PROBE, script],
                        capture_output=True, text=True, cwd=REPO_ROOT,
                        env=env, timeout=120, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('onednn ')]
  assert lines, proc.stdout + proc.stderr
  return lines[-1] == 'onednn True'


@pytest.mark.parametrize('script', ['train.py', 'eval.py'])
def test_entry_points_turn_onednn_on_by_default(script):
  assert _onednn_enabled_in(script, None)


def test_users_setting_wins():
  assert not _onednn_enabled_in('train.py', '0')
