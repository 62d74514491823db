"""scripts/plot_accuracy_vs_epsilon.py on small hand-written reports."""

import json
import os
import subprocess
import sys

from PIL import Image
import pytest

from conftest import REPO_ROOT

SCRIPT = os.path.join(REPO_ROOT, 'scripts', 'plot_accuracy_vs_epsilon.py')


def _report(path, epsilon, accuracy, dataset='fashion_mnist', split='test'):
  with open(path, 'w') as f:
    json.dump({'dataset': dataset, 'held_out': {'split': split},
               'privacy': {'epsilon': epsilon},
               'metrics': {'accuracy_synthetic': accuracy,
                           'accuracy_real': 0.86}}, f)
  return str(path)


def _run(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True,
                        text=True, check=False)


def test_writes_a_png_with_the_points_in_epsilon_order(tmp_path):
  reports = [_report(tmp_path / f'{e}.json', e, a)
             for e, a in ((10.0, 0.70), (1.0, 0.55), (5.0, 0.66))]
  other = _report(tmp_path / 'w.json', 2.0, 0.8)
  out = tmp_path / 'curve.png'
  done = _run(f'--series=ours={",".join(reports)}', f'--series=warm={other}',
              f'--output={out}', '--anchor=DP-GAN=1:71.8,10:70.3')
  assert done.returncode == 0, done.stderr
  assert ('ours: eps 1: 55.0%, eps 5: 66.0%, eps 10: 70.0%; warm: eps 2: '
          '80.0%') in done.stdout
  with Image.open(out) as image:
    assert image.format == 'PNG' and image.size[0] > 300


@pytest.mark.parametrize('second,anchor,message', [
    (dict(dataset='mnist'), [], '--series mix datasets or eval splits'),
    (dict(split='validation'), [], '--series mix datasets or eval splits'),
    (None, [], 'missing.json is not a readable eval.py report'),
    (dict(), ['--anchor=DP-GAN:1=71'], "--anchor='DP-GAN:1=71'"),
    (dict(), ['--series=b.json'], "--series='b.json': expected"),
])
def test_bad_input_names_the_flag_and_writes_nothing(tmp_path, second, anchor,
                                                     message):
  first = _report(tmp_path / 'a.json', 10.0, 0.7)
  other = (str(tmp_path / 'missing.json') if second is None else
           _report(tmp_path / 'b.json', 1.0, 0.5, **second))
  out = tmp_path / 'curve.png'
  done = _run(f'--series=a={first}', f'--series=b={other}',
              f'--output={out}', *anchor)
  assert done.returncode == 2
  assert message in done.stderr
  assert not out.exists()
