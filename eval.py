"""Evaluates an exported DPGAN generator: utility, fidelity, empirical privacy.

Example (offline; a few minutes on 2 CPU cores, the first run on a dataset
also trains and caches its feature classifier):

  python eval.py --export_dir=/tmp/e --dataset=fashion_mnist \
    --manual_dir=/usr/share/datasets/fashion-mnist --model_dir=/tmp/m \
    --output=/tmp/report.json

Writes the JSON report to --output, a sample grid (a row per class) beside it
(same name, .png), TensorBoard summaries under <model_dir>/eval, and prints a
summary. See dpgan_tf/evaluation.py for what is measured.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from dpgan_tf import data as data_lib
from dpgan_tf import evaluation

_DEFAULTS = evaluation.EvalConfig(export_dir='', dataset='', output='')

flags.DEFINE_string('export_dir', None, 'An exported version directory, or '
                    'its parent (then the newest version is evaluated).')
flags.DEFINE_string('dataset', None, 'The dataset the generator was trained '
                    f'on: one of {", ".join(sorted(data_lib.DATASETS))}, '
                    'folder:DIR or tfds:NAME[:LABEL_KEY] (its --image_size '
                    'and the like are read from the export).')
flags.DEFINE_string('output', None, 'The JSON report; the sample grid is '
                    'written beside it as <name>.png.')
flags.DEFINE_string('data_dir', None, 'tfds data directory.')
flags.DEFINE_string('manual_dir', None, 'The dataset\'s official files for '
                    'offline preparation (nothing is ever downloaded).')
flags.DEFINE_string('model_dir', None, 'The training run (checkpoints and '
                    'run_config.json): enables membership inference against '
                    'its critic and TensorBoard summaries under '
                    '<model_dir>/eval.')
flags.DEFINE_integer('num_samples', _DEFAULTS.num_samples, 'Class-balanced '
                     'samples drawn to train the downstream classifier (and '
                     'real training examples for the ceiling).')
flags.DEFINE_integer('fid_samples', _DEFAULTS.fid_samples, 'Samples and real '
                     'test images compared by FID and precision/recall; '
                     'FID is biased upwards at small sizes, so compare runs '
                     'at equal sizes.')
flags.DEFINE_enum('eval_split', _DEFAULTS.eval_split, evaluation.EVAL_SPLITS,
                  'Held-out examples: test (to report) or validation '
                  '(training examples [K, K+V) the run did not use, K from '
                  'its --max_train_examples; to choose hyperparameters '
                  'without reading the test set). validation needs '
                  '--model_dir.')
flags.DEFINE_integer('validation_examples', _DEFAULTS.validation_examples,
                     'V, the size of the validation split.')
flags.DEFINE_integer('seed', _DEFAULTS.seed, 'Seed for sampling, subsets and '
                     'classifier training.')
flags.DEFINE_integer('downstream_runs', _DEFAULTS.downstream_runs,
                     'Train the downstream CNN on samples this many times: '
                     'run i draws its samples and initialisation from '
                     '--seed + i (what --seed=SEED+i gives alone). '
                     'accuracy_synthetic is their mean; the report keeps '
                     'each run and the s.d. One draw varies by about a '
                     'point at epsilon 1: compare runs with several.')
flags.DEFINE_bool('downstream_only', _DEFAULTS.downstream_only, 'Measure '
                  'the downstream accuracy on samples alone, in seconds: no '
                  'real-data ceiling, fidelity or membership inference.')
flags.DEFINE_string('inception_weights', _DEFAULTS.inception_weights,
                    "InceptionV3 no-top ImageNet weights (.h5) for FID: a "
                    "path, 'imagenet' to download them, or 'none' to skip.")
flags.DEFINE_string('cache_dir', None, 'Where the per-dataset feature '
                    'classifier is cached (default: --data_dir, else tfds\'s '
                    'default directory).')

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  config = evaluation.EvalConfig(
      **{f: FLAGS[f].value
         for f in evaluation.EvalConfig.__dataclass_fields__})
  try:
    report = evaluation.evaluate(config)
  except ValueError as e:  # Bad input: a clear message, nothing harmed.
    print(f'eval.py: error: {e}', file=sys.stderr)
    sys.exit(2)
  print(evaluation.summary(report))
  print(f'Report: {config.output}')


if __name__ == '__main__':
  app.run(main)
