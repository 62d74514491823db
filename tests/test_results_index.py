"""results/README.md is what scripts/results_index.py writes from the reports.

The index repeats figures of the JSON reports; this keeps a report and the
index from ever disagreeing (rerun the script after changing results/).
"""

import json
import os
import shutil
import subprocess
import sys

from conftest import REPO_ROOT

SCRIPT = os.path.join(REPO_ROOT, 'scripts', 'results_index.py')
RESULTS = os.path.join(REPO_ROOT, 'results')


def _check(results_dir):
  return subprocess.run([sys.executable, SCRIPT, '--check',
                         f'--results_dir={results_dir}'],
                        capture_output=True, text=True, check=False)


def _copy_of_results(tmp_path):
  copy = tmp_path / 'results'
  shutil.copytree(RESULTS, copy, ignore=shutil.ignore_patterns('*.png'))
  return copy


def test_committed_index_is_up_to_date():
  done = _check(RESULTS)
  assert done.returncode == 0, done.stderr


def test_a_changed_report_makes_the_index_out_of_date(tmp_path):
  results = _copy_of_results(tmp_path)
  report_path = results / 'presets' / 'mnist_eps10' / 'test_runs4.json'
  report = json.loads(report_path.read_text())
  report['metrics']['domain_fid'] += 1.0
  report_path.write_text(json.dumps(report))
  done = _check(results)
  assert done.returncode == 1
  assert 'README.md is out of date' in done.stderr


def test_a_run_without_its_description_is_named(tmp_path):
  results = _copy_of_results(tmp_path)
  (results / 'ablations' / 'mnist_eps1_e7' / 'about.txt').unlink()
  done = _check(results)
  assert done.returncode == 2
  assert 'mnist_eps1_e7 has no about.txt' in done.stderr
