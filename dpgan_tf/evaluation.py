"""Evaluates an exported generator: utility, fidelity and empirical privacy.

`evaluate(config)` produces one report (see REPORT_KEYS and `summary`):

* Downstream accuracy, train on synthetic / test on real: the fixed
  downstream CNN of `classifier.py` trained on `num_samples` class-balanced
  samples from the export's `generate` signature, tested on the real
  held-out examples (with `downstream_runs` > 1, the mean over that many
  sample draws and trainings, with their s.d.); the same CNN trained on as
  many real training examples is the ceiling.
* Fidelity: Fréchet distance and k-NN precision/recall (`metrics.py`) between
  `fid_samples` samples and as many real test images, in two feature spaces:
  InceptionV3 pool features (FID proper; needs the ImageNet weights, which
  may be unavailable offline: the report then says why) and, always, the
  penultimate features of the dataset's own feature network (`domain_fid`:
  NOT comparable to published FIDs). In the domain space the same numbers
  between real training and real test images are reported as the floor a
  perfect generator would reach at this sample size.
* Empirical privacy (with `model_dir`): membership inference against the
  trained critic (`membership.py`), beside the accounted guarantee read from
  the export's dpgan.json.

Held-out examples (`eval_split`): the test split, to report; or, to choose
hyperparameters without ever looking at the test set, a validation split:
training examples [K, K + validation_examples) that the run did not train on
(it kept the first K, `--max_train_examples`). With the validation split, the
ceiling classifier and the FID floor use the run's K training examples only,
and membership inference takes its non-members from the validation split, so
nothing reads the test set. (The cached feature classifier behind domain_fid
was trained on the whole training split, validation examples included; it
defines the feature space only and selects nothing.)

Order: every check that can fail (values, the export and its metadata against
the dataset, the training run, the data) runs before any metric; outputs are
written last, each to a temporary file renamed into place, so a failed run
leaves no partial report and never harms an existing one.
"""

import contextlib
import dataclasses
import functools
import os
import platform
import time
from typing import Optional, Tuple

from absl import logging
import numpy as np
import scipy
import sklearn
import tensorflow as tf
import tensorflow_datasets as tfds
import tensorflow_privacy

from dpgan_tf import classifier
from dpgan_tf import config as config_lib
from dpgan_tf import data as data_lib
from dpgan_tf import export as export_lib
from dpgan_tf import files
from dpgan_tf import image_grid
from dpgan_tf import membership
from dpgan_tf import metrics

REPORT_KEYS = ('dataset', 'held_out', 'export', 'privacy', 'metrics',
               'downstream', 'fidelity', 'membership_inference', 'samples_png', 'config',
               'timings_s', 'versions')
METRIC_KEYS = ('accuracy_synthetic', 'accuracy_synthetic_std',
               'accuracy_real', 'domain_fid',
               'domain_precision', 'domain_recall', 'inception_fid',
               'inception_precision', 'inception_recall', 'mia_auc',
               'mia_advantage')
INCEPTION_SIZE = 299
PRECISION_RECALL_K = 3
_GENERATE_BATCH = 500
EVAL_SPLITS = ('test', 'validation')


class EvalError(ValueError):
  """Bad input for an evaluation; the message names the flag or file."""


@dataclasses.dataclass
class EvalConfig:
  """Everything an evaluation depends on (see eval.py for the flags)."""
  export_dir: str
  dataset: str
  output: str
  data_dir: Optional[str] = None
  manual_dir: Optional[str] = None
  model_dir: Optional[str] = None
  num_samples: int = 10000
  fid_samples: int = 2000
  seed: int = 0
  # The synthetic-trained classifier is trained this many times, run i on
  # its own samples and initialisation from seed + i; see evaluate.
  downstream_runs: int = 1
  # 'imagenet' (download), a path to the no-top .h5 weights, or 'none'.
  inception_weights: str = 'imagenet'
  cache_dir: Optional[str] = None
  # 'test', or 'validation': training examples [K, K + validation_examples)
  # of a run that kept the first K (see module doc).
  eval_split: str = 'test'
  validation_examples: int = 5000
  # Downstream accuracy on the samples alone: no ceiling, fidelity or
  # membership inference, so it takes seconds (the demo's quality figure).
  downstream_only: bool = False

  @property
  def samples_png(self) -> str:
    return os.path.splitext(self.output)[0] + '.png'

  @property
  def feature_cache_dir(self) -> str:
    return self.cache_dir or self.data_dir or tfds.core.constants.DATA_DIR


@dataclasses.dataclass
class _Checked:
  """What validation established about the inputs."""
  spec: data_lib.DatasetSpec
  version_dir: str
  metadata: dict
  run_config: Optional[dict]


# Bad input names its flag, as EvalError (config.require).
_require = functools.partial(config_lib.require, error=EvalError)


def check_export(c: EvalConfig):
  """(version directory, its metadata, the dataset's spec), the export
  checked against --dataset. The spec takes the options the run trained
  with (--image_size and the like) from the export's metadata."""
  version_dir = export_lib.resolve_version_dir(c.export_dir)
  metadata = export_lib.read_metadata(version_dir)
  spec = data_lib.get_spec(c.dataset, data_dir=c.data_dir,
                           **metadata.get('dataset_options', {}))
  exported = (metadata.get('dataset'), tuple(metadata.get('image_shape', ())),
              metadata.get('num_classes'))
  expected = (spec.name, spec.image_shape, spec.num_classes)
  _require(exported == expected,
           f'--export_dir: {version_dir} holds a generator trained on '
           f'{exported[0]!r} (images {exported[1]}, {exported[2]} classes), '
           f'not on --dataset={spec.name} (images {spec.image_shape}, '
           f'{spec.num_classes} classes).')
  return version_dir, metadata, spec


def validate(c: EvalConfig) -> _Checked:
  """Checks everything that needs no data; raises ValueError naming it."""
  _require(bool(c.dataset), '--dataset is required.')
  _require(bool(c.export_dir), '--export_dir is required.')
  _require(bool(c.output), '--output is required (the JSON report).')
  version_dir, metadata, spec = check_export(c)
  _require(not os.path.isdir(c.output),
           f'--output={c.output} is a directory; give a file name.')
  files.check_writable_dir(os.path.dirname(os.path.abspath(c.output)),
                                '--output (its directory)')
  _require(c.num_samples >= 2 * spec.num_classes,
           f'--num_samples={c.num_samples} must be at least 2 per class '
           f'({2 * spec.num_classes}).')
  _require(PRECISION_RECALL_K < c.fid_samples <= c.num_samples,
           f'--fid_samples={c.fid_samples} must be in '
           f'({PRECISION_RECALL_K}, --num_samples={c.num_samples}].')
  _require(c.seed >= 0, f'--seed={c.seed} must be non-negative.')
  _require(c.downstream_runs >= 1,
           f'--downstream_runs={c.downstream_runs} must be at least 1.')
  _require(c.inception_weights in ('imagenet', 'none') or
           os.path.isfile(c.inception_weights),
           f'--inception_weights={c.inception_weights} is not a file (give '
           "the InceptionV3 no-top .h5 weights, 'imagenet' or 'none').")
  _require(c.eval_split in EVAL_SPLITS,
           f'--eval_split={c.eval_split!r}: choose one of {EVAL_SPLITS}.')
  if c.eval_split == 'validation':
    _require(PRECISION_RECALL_K < c.fid_samples <= c.validation_examples,
             f'--fid_samples={c.fid_samples} must be at most '
             f'--validation_examples={c.validation_examples}.')
    _require(bool(c.model_dir), '--eval_split=validation needs --model_dir '
             '(its run_config.json says which training examples the run '
             'used).')
  run_config = None
  if c.model_dir:
    _require(os.path.isdir(c.model_dir),
             f'--model_dir={c.model_dir} is not a directory.')
    run_config = membership.read_run_config(c.model_dir, spec)
    _require(c.eval_split == 'test' or bool(
        run_config.get('max_train_examples')),
             f'--eval_split=validation: the run in --model_dir={c.model_dir} '
             'trained on the whole training split, so no training example is '
             'left for validation; train with --max_train_examples=K below '
             'the split size.')
  # The evaluation reads the data the run trained on, prepared already or
  # from --manual_dir: never a download.
  data_lib.check_available(spec, c.data_dir, c.manual_dir)
  return _Checked(spec, version_dir, metadata, run_config)


def load_generator(version_dir: str, spec: data_lib.DatasetSpec):
  """The exported module; checks its `generate` output shape."""
  try:
    module = tf.saved_model.load(version_dir)
    generate = module.signatures['generate']
    probe = generate(labels=tf.zeros([1], tf.int32),
                     seed=tf.constant(0, tf.int64))['images']
  except (OSError, ValueError, KeyError, tf.errors.OpError) as e:
    raise EvalError(f'--export_dir: {version_dir} is not a loadable DPGAN '
                    f'export ({type(e).__name__}: {e}).') from e
  _require(tuple(probe.shape[1:]) == spec.image_shape,
           f'--export_dir: {version_dir} generates images of shape '
           f'{tuple(probe.shape[1:])}, --dataset={spec.name} has '
           f'{spec.image_shape}.')
  return module


def _load_split(c: EvalConfig, spec: data_lib.DatasetSpec, split: str,
                max_examples: Optional[int] = None) -> data_lib.LabeledImages:
  """load_split, with read errors of corrupt tfds files turned into EvalError.

  load_split checks what tfds.load raises; a truncated record file only fails
  while the examples are read.
  """
  try:
    return data_lib.load_split(spec, split, c.data_dir, c.manual_dir,
                               max_examples)
  except tf.errors.OpError as e:
    raise EvalError(f'could not read {c.dataset}/{split} from '
                    f'--data_dir={c.data_dir}: {type(e).__name__}: '
                    f'{e.message}') from e


def validation_split(
    c: EvalConfig, spec: data_lib.DatasetSpec,
    k: int) -> Tuple[data_lib.LabeledImages, data_lib.LabeledImages]:
  """(training examples [0, K + V), the validation examples [K, K + V)).

  The run trained on the first K training examples only, so [K, K + V) are
  as unseen as the test set, and choosing on them leaves the test set for
  the report. Refuses ranges past the end of the split before reading it.
  """
  v = c.validation_examples
  _load_split(c, spec, 'train', 1)  # Prepares the data: its size is known.
  n = data_lib.split_size(spec, 'train', c.data_dir)
  _require(k < n, f'--eval_split=validation: the run in --model_dir trained '
           f'on all {n} {c.dataset} training examples (K={k}), so none is '
           'left for validation; train with --max_train_examples below '
           f'{n}.')
  _require(k + v <= n, f'--validation_examples={v}: training examples [{k}, '
           f'{k + v}) run past the {n} in the {c.dataset} training split '
           f'(the run used the first {k}); give at most {n - k}.')
  train = _load_split(c, spec, 'train', max(
      c.num_samples, classifier.FEATURE_TRAIN_EXAMPLES, k + v))
  return train, data_lib.LabeledImages(train.images[k:k + v],
                                       train.labels[k:k + v], train.spec)


def generate_samples(module, num_classes: int, num_samples: int,
                     seed: int):
  """Class-balanced samples (uint8 images, labels) in a seeded random order.

  The order is shuffled so that any prefix (the FID subset) is balanced too.
  Each batch gets its own seed for `generate`'s stateless noise.
  """
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(num_samples) % num_classes).astype(
      np.int32)
  batch_seeds = rng.integers(0, 2**62, size=-(-num_samples // _GENERATE_BATCH))
  images = []
  for i, batch_seed in enumerate(batch_seeds):
    batch = labels[i * _GENERATE_BATCH:(i + 1) * _GENERATE_BATCH]
    out = module.signatures['generate'](
        labels=tf.constant(batch), seed=tf.constant(batch_seed, tf.int64))
    images.append(np.round(out['images'].numpy() * 255).astype(np.uint8))
    if i % 4 == 3 or i == len(batch_seeds) - 1:
      logging.info('Generated %d/%d samples', min(num_samples, (i + 1) *
                                                  _GENERATE_BATCH), num_samples)
  return np.concatenate(images), labels


def load_inception(weights: str):
  """(InceptionV3 pool-feature model, {}) or (None, why it is missing)."""
  if weights == 'none':
    return None, {'reason': 'skipped: --inception_weights=none'}
  try:
    model = tf.keras.applications.InceptionV3(
        include_top=False, weights=weights, pooling='avg',
        input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3))
  except Exception as e:  # pylint: disable=broad-except
    # A failed download raises any of several types; the rest still runs.
    return None, {
        'reason': (f'InceptionV3 ImageNet weights unavailable from '
                   f'{weights!r}; pass --inception_weights=PATH to '
                   'inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5'),
        'error': f'{type(e).__name__}: {e}'}
  return model, {}


def inception_features(model, images: np.ndarray,
                       batch_size: int = 50) -> np.ndarray:
  """Pool features [N, 2048]: 299x299, grayscale tiled to RGB, [-1, 1]."""
  out = []
  for start in range(0, len(images), batch_size):
    x = tf.image.convert_image_dtype(images[start:start + batch_size],
                                     tf.float32)
    x = tf.image.resize(x, (INCEPTION_SIZE, INCEPTION_SIZE))
    if x.shape[-1] == 1:
      x = tf.tile(x, [1, 1, 1, 3])
    out.append(model(x * 2 - 1, training=False).numpy())
    if start // batch_size % 10 == 0:
      logging.info('Inception features: %d/%d', start + len(x), len(images))
  return np.concatenate(out)


def fidelity(fake, real, real_reference=None) -> dict:
  """FID and precision/recall of fake vs real features (and real_reference
  vs real, the floor at this sample size)."""
  result = {'fid': metrics.frechet_distance(fake, real),
            **metrics.precision_recall(real, fake, PRECISION_RECALL_K)}
  if real_reference is not None:
    result['real_reference'] = fidelity(real_reference, real)
  return result


class _Timer:
  """Wall-clock seconds per stage, for the report."""

  def __init__(self):
    self.seconds = {}

  @contextlib.contextmanager
  def __call__(self, stage: str):
    logging.info('Evaluation: %s ...', stage)
    start = time.time()
    yield
    self.seconds[stage] = round(time.time() - start, 2)


def _versions(mia_implementation: Optional[str]) -> dict:
  return {'python': platform.python_version(), 'tensorflow': tf.__version__,
          'tensorflow_datasets': tfds.__version__,
          'tensorflow_privacy': tensorflow_privacy.__version__,
          'numpy': np.__version__, 'scipy': scipy.__version__,
          'scikit_learn': sklearn.__version__,
          'membership_attack': mia_implementation}


@dataclasses.dataclass
class _RealData:
  """The real examples an evaluation reads, and how the report names them."""
  train: data_lib.LabeledImages  # Feature classifier; membership members.
  held: data_lib.LabeledImages  # What every metric tests on.
  real_pool: data_lib.LabeledImages  # Ceiling and FID floor draw from it.
  held_out: dict  # The report's description of `held`.


def _load_validation_data(c: EvalConfig, spec: data_lib.DatasetSpec,
                          k: int) -> _RealData:
  """Held out: training examples [K, K + V); the test set is never read."""
  train, held = validation_split(c, spec, k)
  # The run's own training examples, for the ceiling and the FID floor.
  real_pool = data_lib.LabeledImages(train.images[:k], train.labels[:k], spec)
  return _RealData(train, held, real_pool, {
      'split': 'validation', 'examples': len(held),
      'range': f'train[{k}:{k + len(held)}]',
      'note': f'training examples the run did not use (it kept the first '
              f'{k}); the test set was not read'})


def _load_test_data(c: EvalConfig, spec: data_lib.DatasetSpec,
                    k: int) -> _RealData:
  """Held out: the test split, to report."""
  held = _load_split(c, spec, 'test')
  _require(c.fid_samples <= len(held),
           f'--fid_samples={c.fid_samples} exceeds the {len(held)} '
           f'{c.dataset} test examples.')
  train = _load_split(c, spec, 'train', max(
      c.num_samples, classifier.FEATURE_TRAIN_EXAMPLES, k))
  return _RealData(train, held, train, {
      'split': 'test', 'examples': len(held), 'range': 'test',
      'note': 'the test split'})


def _load_real_data(c: EvalConfig, checked: _Checked) -> _RealData:
  """The real examples of `eval_split` (module doc)."""
  k = (checked.run_config or {}).get('max_train_examples') or 0
  if c.eval_split == 'validation':
    return _load_validation_data(c, checked.spec, k)
  return _load_test_data(c, checked.spec, k)


def _synthetic_runs(c: EvalConfig, module, spec: data_lib.DatasetSpec,
                    held: data_lib.LabeledImages,
                    first_draw: Tuple[np.ndarray, np.ndarray]) -> list:
  """The CNN trained on samples, once per --downstream_runs.

  Run i is what --seed=seed+i measures alone (its samples and
  initialisation): one draw varies by about a point at epsilon=1
  (docs/results.md, "Evaluation noise"), so comparisons want several.
  """
  runs = []
  for run in range(c.downstream_runs):
    seed = c.seed + run
    images, labels = (first_draw if run == 0 else generate_samples(
        module, spec.num_classes, c.num_samples, seed))
    model = classifier.train_classifier(
        images, labels, spec.image_shape, spec.num_classes,
        classifier.DOWNSTREAM, seed, name='synthetic-trained')
    runs.append({'seed': seed, 'test_accuracy': classifier.accuracy(
        model, held.images, held.labels)})
  return runs


def _real_ceiling(c: EvalConfig, spec: data_lib.DatasetSpec,
                  real_pool: data_lib.LabeledImages,
                  held: data_lib.LabeledImages, rng) -> dict:
  """The same CNN trained on as many real examples as samples: the ceiling."""
  real_idx = np.sort(rng.choice(len(real_pool), min(c.num_samples,
                                                    len(real_pool)),
                                replace=False))
  real = classifier.train_classifier(
      real_pool.images[real_idx], real_pool.labels[real_idx],
      spec.image_shape, spec.num_classes, classifier.DOWNSTREAM, c.seed,
      name='real-trained')
  return {'train_examples': len(real_idx),
          'test_accuracy': classifier.accuracy(real, held.images,
                                               held.labels)}


def _downstream(c: EvalConfig, module, spec: data_lib.DatasetSpec,
                real: _RealData, first_draw, rng) -> dict:
  """Train on synthetic / test on real, beside the real-data ceiling
  (skipped with --downstream_only, which measures the samples alone)."""
  synthetic_runs = _synthetic_runs(c, module, spec, real.held, first_draw)
  accuracies = [r['test_accuracy'] for r in synthetic_runs]
  return {
      **classifier.describe(),
      'test_examples': len(real.held),
      'synthetic': {
          'train_examples': c.num_samples,
          'test_accuracy': float(np.mean(accuracies)),
          # Sample s.d. over the runs; undefined for one run.
          'test_accuracy_std': (float(np.std(accuracies, ddof=1))
                                if len(accuracies) > 1 else None),
          'runs': synthetic_runs},
      'real': (None if c.downstream_only else
               _real_ceiling(c, spec, real.real_pool, real.held, rng)),
  }


def _domain_fidelity(c: EvalConfig, spec: data_lib.DatasetSpec,
                     real: _RealData, fake_fid, held_fid, train_fid) -> dict:
  """Fidelity in the dataset's own feature network, which needs no download
  (so it is always there), with real train vs held-out as the floor."""
  feature_model, feature_info = classifier.load_or_train_feature_classifier(
      spec.key, real.train.images, real.train.labels, spec.image_shape,
      spec.num_classes, c.feature_cache_dir, c.seed)
  feature_info['test_accuracy'] = classifier.accuracy(
      feature_model, real.held.images, real.held.labels)
  return {
      'name': f'Fréchet distance in {c.dataset} classifier features '
              '(not Inception FID)',
      'feature_classifier': feature_info,
      **fidelity(*(classifier.features(feature_model, x)
                   for x in (fake_fid, held_fid, train_fid))),
  }


def _inception_fidelity(c: EvalConfig, fake_fid, held_fid) -> dict:
  """FID proper, or why it is missing: the weights may be unavailable
  offline, and the rest of the report must not depend on them."""
  inception_model, why_not = load_inception(c.inception_weights)
  if inception_model is None:
    logging.warning('Inception FID skipped: %s', why_not)
    return {'available': False, **why_not}
  return {'available': True, 'weights': c.inception_weights,
          **fidelity(inception_features(inception_model, fake_fid),
                     inception_features(inception_model, held_fid))}


def membership_skipped(model_dir: Optional[str],
                       metadata: dict) -> Optional[str]:
  """Why the membership attack on the run's critic cannot run, or None."""
  if not model_dir:
    return 'no --model_dir (the training run) given'
  if not metadata.get('critic_steps'):
    return 'no DP-SGD phase: the critic was never trained'
  return None


def _fidelity_and_membership(c: EvalConfig, checked: _Checked,
                             real: _RealData, fake_images: np.ndarray, rng,
                             timer: _Timer):
  """(domain fidelity, Inception fidelity, membership inference)."""
  fake_fid = fake_images[:c.fid_samples]
  held_fid = real.held.images[np.sort(rng.choice(
      len(real.held), c.fid_samples, replace=False))]
  train_fid = real.real_pool.images[np.sort(rng.choice(
      len(real.real_pool), min(c.fid_samples, len(real.real_pool)),
      replace=False))]
  with timer('domain features'):
    domain = _domain_fidelity(c, checked.spec, real, fake_fid, held_fid,
                              train_fid)
  with timer('inception features'):
    inception = _inception_fidelity(c, fake_fid, held_fid)
  skipped = membership_skipped(c.model_dir, checked.metadata)
  if skipped:
    return domain, inception, {'skipped': skipped}
  with timer('membership inference'):
    attack = membership.attack_critic(c.model_dir, checked.spec, real.train,
                                      real.held, c.seed, checked.run_config)
  return domain, inception, attack


def _skipped_by_downstream_only():
  """(domain, Inception, membership) entries of a --downstream_only report."""
  skipped = 'skipped: --downstream_only'
  return ({'skipped': skipped}, {'available': False, 'reason': skipped},
          {'skipped': skipped})


def _privacy(metadata: dict) -> dict:
  """The accounted guarantee from the export's dpgan.json, and the
  membership advantage it bounds (to set beside the measured one)."""
  privacy = {key: metadata.get(key) for key in (
      'epsilon', 'delta', 'guarantee', 'noise_multiplier', 'sampling_rate',
      'sampling', 'critic_steps', 'accountant', 'dataset_size',
      'warm_start')}
  if metadata.get('epsilon') is not None:
    privacy['advantage_bound'] = membership.advantage_bound(
        metadata['epsilon'], metadata['delta'])
  return privacy


def _headline_metrics(downstream: dict, domain: dict, inception: dict,
                      attack: dict) -> dict:
  """One number per METRIC_KEYS entry (None where skipped), for tables and
  TensorBoard."""
  return {
      'accuracy_synthetic': downstream['synthetic']['test_accuracy'],
      'accuracy_synthetic_std': downstream['synthetic']['test_accuracy_std'],
      'accuracy_real': (downstream['real'] or {}).get('test_accuracy'),
      'domain_fid': domain.get('fid'),
      'domain_precision': domain.get('precision'),
      'domain_recall': domain.get('recall'),
      'inception_fid': inception.get('fid'),
      'inception_precision': inception.get('precision'),
      'inception_recall': inception.get('recall'),
      'mia_auc': attack.get('auc'),
      'mia_advantage': attack.get('advantage'),
  }


def _report(c: EvalConfig, checked: _Checked, held_out: dict,
            downstream: dict, domain: dict, inception: dict, attack: dict,
            timings: dict) -> dict:
  """The report, its keys in REPORT_KEYS order."""
  return {
      'dataset': c.dataset,
      'held_out': held_out,
      'export': {'path': checked.version_dir,
                 'version': os.path.basename(checked.version_dir),
                 # Best of this many candidates by critic score (export.py).
                 'sample_candidates': export_lib.sample_candidates_of(
                     checked.metadata)},
      'privacy': _privacy(checked.metadata),
      'metrics': _headline_metrics(downstream, domain, inception, attack),
      'downstream': downstream,
      'fidelity': {'fid_samples': c.fid_samples, 'domain': domain,
                   'inception': inception},
      'membership_inference': attack,
      'samples_png': c.samples_png,
      'config': dataclasses.asdict(c),
      'timings_s': timings,
      'versions': _versions(attack.get('implementation')),
  }


def evaluate(c: EvalConfig) -> dict:
  """Runs the whole evaluation and writes its outputs; returns the report.

  Every check that can fail runs before any metric, and the outputs are
  written last (module doc). One generator of `c.seed` draws every real
  subset, the ceiling's before the FID subsets'.
  """
  checked = validate(c)
  spec, metadata = checked.spec, checked.metadata
  timer = _Timer()
  with timer('load data'):
    module = load_generator(checked.version_dir, spec)
    real = _load_real_data(c, checked)
  rng = np.random.default_rng(c.seed)
  with timer('generate'):
    first_draw = generate_samples(module, spec.num_classes, c.num_samples,
                                  c.seed)
    grid = image_grid.from_export(module, metadata['num_classes'], 10, c.seed)
  with timer('downstream classifiers'):
    downstream = _downstream(c, module, spec, real, first_draw, rng)
  if c.downstream_only:
    domain, inception, attack = _skipped_by_downstream_only()
  else:
    domain, inception, attack = _fidelity_and_membership(
        c, checked, real, first_draw[0], rng, timer)
  report = _report(c, checked, real.held_out, downstream, domain, inception,
                   attack, timer.seconds)
  class_names = metadata.get('class_names') or [
      str(k) for k in range(metadata['num_classes'])]
  write_outputs(c, report, grid, class_names,
                metadata.get('critic_steps') or 0)
  return report


def write_outputs(c: EvalConfig, report: dict, grid: np.ndarray,
                  class_names, step: int) -> None:
  """The JSON report, the PNG grid beside it (rows named), and TensorBoard
  summaries."""
  image_grid.write_png(c.samples_png, grid, class_names)
  files.write_json_atomically(c.output, report)
  if c.model_dir:
    writer = tf.summary.create_file_writer(os.path.join(c.model_dir, 'eval'))
    with writer.as_default():
      for key, value in report['metrics'].items():
        if value is not None:
          tf.summary.scalar(f'eval/{key}', value, step=step)
      tf.summary.image('eval/samples', grid[None], step=step)
    writer.close()


def _fmt(value, spec: str = '.4f') -> str:
  return 'n/a' if value is None else format(value, spec)


def summary(report: dict) -> str:
  """The report on one screen."""
  lines = [
      f'DPGAN evaluation: {report["export"]["path"]} on {report["dataset"]}',
      f'  Guarantee: {report["privacy"].get("guarantee")}',
      *_downstream_lines(report),
      *_domain_lines(report),
      _inception_line(report),
      *_membership_lines(report),
      f'  Samples: {report["samples_png"]}',
      '  Timings (s): ' + ', '.join(
          f'{k} {v:.0f}' for k, v in report['timings_s'].items()),
  ]
  return '\n'.join(lines)


def _downstream_lines(report: dict) -> list:
  """Synthetic-trained accuracy (with its spread over several runs) beside
  the real-data ceiling, when measured."""
  m, downstream = report['metrics'], report['downstream']
  runs = downstream['synthetic']['runs']
  spread = (f' (mean of {len(runs)} runs, s.d. '
            f'{_fmt(m["accuracy_synthetic_std"])})' if len(runs) > 1 else '')
  ceiling = ('' if downstream['real'] is None else
             f'   {downstream["real"]["train_examples"]} real examples '
             f'(ceiling) {_fmt(m["accuracy_real"])}')
  return [
      f'  Accuracy on {downstream["test_examples"]} real held-out images '
      f'({report["held_out"]["range"]}) of the fixed CNN trained on',
      f'    {downstream["synthetic"]["train_examples"]} samples '
      f'{_fmt(m["accuracy_synthetic"])}{spread}{ceiling}',
  ]


def _domain_lines(report: dict) -> list:
  """Domain fidelity beside its real-vs-real floor, or why it was skipped."""
  m, domain = report['metrics'], report['fidelity']['domain']
  if 'skipped' in domain:
    return [f'  Fidelity: {domain["skipped"]}']
  floor = domain['real_reference']
  return [
      f'  {domain["name"]}, {report["fidelity"]["fid_samples"]} samples:',
      f'    domain_fid {_fmt(m["domain_fid"], ".3f")} (real train vs '
      f'held-out: {_fmt(floor["fid"], ".3f")})',
      f'    precision {_fmt(m["domain_precision"])} recall '
      f'{_fmt(m["domain_recall"])} (real: {_fmt(floor["precision"])} / '
      f'{_fmt(floor["recall"])})',
  ]


def _inception_line(report: dict) -> str:
  """Inception FID, or why it is missing."""
  m, inception = report['metrics'], report['fidelity']['inception']
  if not inception['available']:
    return f'  Inception FID: n/a ({inception["reason"]})'
  return (f'  Inception FID {_fmt(m["inception_fid"], ".3f")} '
          f'precision {_fmt(m["inception_precision"])} recall '
          f'{_fmt(m["inception_recall"])}')


def _membership_lines(report: dict) -> list:
  """Each attack's measured advantage, beside the bound the guarantee puts
  on it."""
  attack, privacy = report['membership_inference'], report['privacy']
  if 'skipped' in attack:
    return [f'  Membership inference: {attack["skipped"]}']
  lines = [
      f'  Membership inference on the critic ({attack["implementation"]}, '
      f'{attack["num_members"]} members vs {attack["num_nonmembers"]} '
      'non-members):']
  for name, result in sorted(attack['attacks'].items()):
    lines.append(f'    {name}: AUC {_fmt(result["auc"])} advantage '
                 f'{_fmt(result["advantage"])}')
  if privacy.get('advantage_bound') is not None:
    lines.append(f'    (bound from the guarantee: advantage <= '
                 f'{_fmt(privacy["advantage_bound"])})')
  return lines
