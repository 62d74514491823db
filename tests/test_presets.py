"""The presets in configs/ are valid train.py flagfiles for their budget.

A preset is only a file of flags, so nothing else would notice a typo in a
flag name, a value validate() rejects, or a file whose name promises another
dataset or epsilon than its flags give.
"""

import glob
import json
import os
import subprocess
import sys

from conftest import REPO_ROOT  # pylint: disable=g-bad-import-order

# Parses every preset as train.py would, in one interpreter (train.py's flags
# live in the global absl registry, so it is kept out of the test process).
_PARSE = """
import dataclasses, json, sys
from absl import flags
import train
from dpgan_tf import config as config_lib
parsed = {}
for path in sys.argv[1:]:
  flags.FLAGS.unparse_flags()
  flags.FLAGS(['train.py', '--flagfile=' + path, '--model_dir=/unused'])
  config = train.config_from_flags()
  config_lib.validate(config)
  parsed[path] = dataclasses.asdict(config)
print(json.dumps(parsed))
"""


def test_presets_parse_and_match_their_names():
  # configs/dpgan/: DP-GAN alone where a preset uses the warm start.
  paths = sorted(glob.glob(os.path.join(REPO_ROOT, 'configs', '*.flags')) +
                 glob.glob(os.path.join(REPO_ROOT, 'configs', 'dpgan',
                                        '*.flags')))
  names = {os.path.basename(p) for p in paths}
  assert {f'{d}_eps{e}.flags' for d in ('mnist', 'fashion_mnist')
          for e in (1, 10)} <= names
  proc = subprocess.run([sys.executable, '-c', _PARSE, *paths],
                        capture_output=True, text=True, cwd=REPO_ROOT,
                        timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  parsed = json.loads(proc.stdout.splitlines()[-1])
  for path, config in parsed.items():
    epsilon = config['target_epsilon']
    # demo.flags is scripts/demo.sh's; the others are named for their budget.
    assert os.path.basename(path) in (
        'demo.flags', f'{config["dataset"]}_eps{epsilon:g}.flags')
    assert config['delta'] == 1e-5
    assert config['sampling'] == 'poisson'
    assert config['num_microbatches'] is None  # One example per microbatch.
    # Training examples past the first K are the validation split.
    assert 0 < config['max_train_examples'] < 60000
    assert config['seed'] is None  # Drawn from the OS unless given.
    if os.path.basename(os.path.dirname(path)) == 'dpgan':
      assert config['warm_start'] == 'none'
