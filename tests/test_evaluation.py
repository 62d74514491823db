"""The evaluation end to end on a tiny export, its report, and bad inputs."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from dpgan_tf import classifier
from dpgan_tf import data as data_lib
from dpgan_tf import evaluation
from dpgan_tf import export as export_lib
from dpgan_tf import networks

from conftest import FASHION_MNIST_DIR, REPO_ROOT  # pylint: disable=g-bad-import-order

LATENT_DIM = 8


def _export(export_dir, dataset='fashion_mnist'):
  """A tiny untrained generator exported as train.py would."""
  spec = data_lib.DATASETS[dataset]
  generator = networks.build_generator(spec.image_shape, spec.num_classes,
                                       LATENT_DIM, width=4)
  metadata = {'dataset': dataset, 'image_shape': list(spec.image_shape),
              'num_classes': spec.num_classes, 'latent_dim': LATENT_DIM,
              'epsilon': 3.0, 'delta': 1e-5, 'critic_steps': 7,
              'guarantee': '(3, 1e-05)-DP for each training example'}
  return export_lib.export_generator(generator, export_dir, LATENT_DIM,
                                     metadata)


@pytest.fixture(scope='module')
def tiny_export(tmp_path_factory):
  return _export(str(tmp_path_factory.mktemp('export')))


def _model_dir(path, dataset='fashion_mnist', max_train_examples=300):
  spec = data_lib.DATASETS[dataset]
  critic = networks.build_critic(spec.image_shape, spec.num_classes, 8)
  tf.train.Checkpoint(critic=critic).save(os.path.join(path, 'ckpt'))
  with open(os.path.join(path, 'run_config.json'), 'w') as f:
    json.dump({'dataset': dataset, 'critic_width': 8,
               'max_train_examples': max_train_examples}, f)
  return path


def _config(tmp_path, tfds_dir, **overrides):
  values = dict(dataset='fashion_mnist',
                output=str(tmp_path / 'report.json'), data_dir=tfds_dir,
                manual_dir=FASHION_MNIST_DIR, num_samples=200,
                fid_samples=100, inception_weights='none',
                cache_dir=str(tmp_path / 'cache'))
  values.update(overrides)
  return evaluation.EvalConfig(**values)


def test_evaluate_end_to_end(tmp_path, tiny_export, tfds_dir, monkeypatch):
  monkeypatch.setattr(classifier, 'FEATURE_TRAIN_EXAMPLES', 500)
  model_dir = _model_dir(str(tmp_path / 'run'))
  c = _config(tmp_path, tfds_dir, export_dir=os.path.dirname(tiny_export),
              model_dir=model_dir, downstream_runs=2)
  report = evaluation.evaluate(c)

  with open(c.output) as f:
    assert json.load(f) == json.loads(json.dumps(report))
  assert tuple(sorted(report)) == tuple(sorted(evaluation.REPORT_KEYS))
  assert tuple(report['metrics']) == evaluation.METRIC_KEYS
  m = report['metrics']
  for key in ('accuracy_synthetic', 'accuracy_real', 'domain_precision',
              'domain_recall', 'mia_auc', 'mia_advantage'):
    assert 0.0 <= m[key] <= 1.0, key
  # An untrained generator is far worse than real data on every count.
  assert m['accuracy_real'] > m['accuracy_synthetic']
  # Run i of --downstream_runs is what --seed=i measures alone, and
  # --downstream_only measures the same figure, skipping everything else.
  alone = evaluation.evaluate(_config(
      tmp_path, tfds_dir, export_dir=os.path.dirname(tiny_export), seed=1,
      output=str(tmp_path / 'seed1.json'), downstream_only=True))
  assert alone['metrics']['accuracy_synthetic_std'] is None  # One run.
  assert [key for key, value in alone['metrics'].items()
          if value is not None] == ['accuracy_synthetic']
  assert alone['downstream']['real'] is None
  assert alone['membership_inference'] == {
      'skipped': 'skipped: --downstream_only'}
  assert set(alone['timings_s']) == {'load data', 'generate',
                                     'downstream classifiers'}
  assert 'Fidelity: skipped: --downstream_only' in evaluation.summary(alone)
  runs = report['downstream']['synthetic']['runs']
  assert runs == [runs[0], alone['downstream']['synthetic']['runs'][0]]
  assert [r['seed'] for r in runs] == [0, 1]
  accuracies = [r['test_accuracy'] for r in runs]
  assert accuracies[0] != accuracies[1]  # Each run has its own draw.
  assert m['accuracy_synthetic'] == pytest.approx(np.mean(accuracies))
  assert m['accuracy_synthetic_std'] == pytest.approx(
      np.std(accuracies, ddof=1))
  domain = report['fidelity']['domain']
  assert m['domain_fid'] > domain['real_reference']['fid'] >= 0
  assert 'classifier features' in domain['name']
  assert domain['feature_classifier']['train_examples'] == 500
  assert m['inception_fid'] is None
  assert not report['fidelity']['inception']['available']
  assert report['export']['path'] == tiny_export
  # Its metadata predates --sample_candidates: plain samples.
  assert report['export']['sample_candidates'] == 1
  assert report['privacy']['epsilon'] == 3.0
  assert 0 < report['privacy']['advantage_bound'] < 1
  attack = report['membership_inference']
  assert attack['num_members'] == 300  # the run's max_train_examples.
  assert report['versions']['membership_attack'] == attack['implementation']

  page = np.asarray(Image.open(report['samples_png']))
  # A row of 10 per class, the class names in a margin on the left.
  assert page.shape[0] == 280 and page.shape[1] > 280
  assert page[:, :page.shape[1] - 280].max() > 200
  assert os.listdir(os.path.join(model_dir, 'eval'))
  text = evaluation.summary(report)
  assert 'domain_fid' in text and 'AUC' in text
  assert 'mean of 2 runs' in text
  assert len(text.splitlines()) < 25


def test_validation_split_never_reads_the_test_set(tmp_path, tiny_export,
                                                  tfds_dir, monkeypatch):
  monkeypatch.setattr(classifier, 'FEATURE_TRAIN_EXAMPLES', 500)
  read = []
  load_split = data_lib.load_split

  def recording_load_split(dataset, split, *args):
    read.append(split)
    return load_split(dataset, split, *args)

  monkeypatch.setattr(data_lib, 'load_split', recording_load_split)
  c = _config(tmp_path, tfds_dir, export_dir=tiny_export,
              model_dir=_model_dir(str(tmp_path / 'run')),
              eval_split='validation', validation_examples=150)
  train, validation = evaluation.validation_split(
      c, data_lib.DATASETS["fashion_mnist"], 300)
  np.testing.assert_array_equal(validation.images, train.images[300:450])
  report = evaluation.evaluate(c)

  assert 'test' not in read and 'train' in read
  assert report['held_out']['range'] == 'train[300:450]'
  assert report['downstream']['test_examples'] == 150
  assert report['downstream']['real']['train_examples'] == 200
  assert report['membership_inference']['num_nonmembers'] == 150
  assert 'train[300:450]' in evaluation.summary(report)


@pytest.mark.parametrize('max_train_examples,validation_examples,match', [
    (59950, 100, r'\[59950, 60050\) run past the 60000'),
    (60000, 100, 'trained on all 60000'),
    (None, 100, 'trained on the whole training split'),
])
def test_validation_split_refuses_ranges_outside_the_split(
    tmp_path, tiny_export, tfds_dir, max_train_examples, validation_examples,
    match):
  c = _config(tmp_path, tfds_dir, export_dir=tiny_export,
              model_dir=_model_dir(str(tmp_path / 'run'),
                                   max_train_examples=max_train_examples),
              eval_split='validation', validation_examples=validation_examples)
  with pytest.raises(ValueError, match=match):
    evaluation.evaluate(c)
  assert not os.path.exists(c.output)


def test_generate_samples_is_balanced_shuffled_and_seeded(tiny_export):
  module = tf.saved_model.load(tiny_export)
  images, labels = evaluation.generate_samples(module, 10, 1200, seed=3)
  assert images.shape == (1200, 28, 28, 1) and images.dtype == np.uint8
  assert np.bincount(labels).tolist() == [120] * 10
  assert len(set(labels[:10])) > 1  # Shuffled, so every prefix is mixed.
  again, _ = evaluation.generate_samples(module, 10, 1200, seed=3)
  np.testing.assert_array_equal(images, again)


def test_inception_features_resize_and_tile_grayscale():
  seen = []

  def model(x, training):
    del training
    seen.append(x)
    return tf.reduce_mean(x, axis=[1, 2])

  images = np.full((3, 28, 28, 1), 255, np.uint8)
  features = evaluation.inception_features(model, images, batch_size=2)
  assert features.shape == (3, 3)
  assert seen[0].shape == (2, 299, 299, 3)
  np.testing.assert_allclose(features, 1.0)  # [0, 255] -> [-1, 1].


def test_unavailable_inception_weights_are_reported(monkeypatch):
  assert evaluation.load_inception('none') == (
      None, {'reason': 'skipped: --inception_weights=none'})

  def offline(**kwargs):
    raise Exception(f'URL fetch failure for {kwargs["weights"]}')  # pylint: disable=broad-exception-raised

  monkeypatch.setattr(tf.keras.applications, 'InceptionV3', offline)
  model, why_not = evaluation.load_inception('imagenet')
  assert model is None
  assert 'unavailable' in why_not['reason']
  assert '--inception_weights=PATH' in why_not['reason']
  assert why_not['error'] == 'Exception: URL fetch failure for imagenet'


@pytest.mark.parametrize('overrides,match', [
    ({'export_dir': '/nonexistent'}, 'holds no exported model'),
    ({'dataset': 'cifar10'}, r'trained on .fashion_mnist.'),
    ({'fid_samples': 500}, '--fid_samples=500'),
    ({'num_samples': 5}, '--num_samples=5'),
    ({'inception_weights': '/nonexistent.h5'}, '--inception_weights'),
    ({'output': '/'}, 'is a directory'),
    ({'manual_dir': '/nonexistent'}, '--manual_dir=/nonexistent'),
    ({'model_dir': '/'}, 'run_config.json'),
    ({'manual_dir': None, 'data_dir': '/nonexistent'},
     '--data_dir=/nonexistent holds no prepared fashion_mnist'),
    ({'eval_split': 'validation'}, 'needs --model_dir'),
    ({'eval_split': 'validation', 'validation_examples': 50},
     '--validation_examples=50'),
    ({'eval_split': 'train'}, '--eval_split'),
    ({'downstream_runs': 0}, '--downstream_runs=0'),
])
def test_bad_inputs_are_rejected_before_any_work(tmp_path, tiny_export,
                                                 overrides, match):
  with pytest.raises(ValueError, match=match):
    evaluation.validate(_config(tmp_path, None, **{'export_dir': tiny_export,
                                                   **overrides}))


def test_model_dir_of_another_dataset_is_rejected(tmp_path, tiny_export):
  model_dir = _model_dir(str(tmp_path / 'run'), dataset='mnist')
  with pytest.raises(ValueError, match="trained on 'mnist'"):
    evaluation.validate(_config(tmp_path, None, export_dir=tiny_export,
                                model_dir=model_dir))


def test_empty_data_dir_is_rejected_without_downloading(tmp_path,
                                                        tiny_export):
  with pytest.raises(ValueError, match='holds no prepared fashion_mnist'):
    evaluation.validate(_config(tmp_path, str(tmp_path), manual_dir=None,
                                export_dir=tiny_export))
  assert os.listdir(tmp_path) == []  # Nothing written there.


def test_corrupt_data_dir_is_rejected(tmp_path, tiny_export, tfds_dir):
  data_lib.load_split('fashion_mnist', 'test', tfds_dir, FASHION_MNIST_DIR,
                      max_examples=1)  # Prepared, so there is a copy to break.
  corrupt = tmp_path / 'tfds'
  shutil.copytree(tfds_dir, corrupt, ignore=shutil.ignore_patterns(
      'downloads', '*train*', 'dpgan_eval'))
  for root, _, files in os.walk(corrupt):
    for name in files:
      if 'tfrecord' in name:
        with open(os.path.join(root, name), 'r+b') as f:
          f.truncate(1000)
  with pytest.raises(ValueError, match='fashion_mnist/test'):
    evaluation.evaluate(_config(tmp_path, str(corrupt),
                                export_dir=tiny_export, manual_dir=None))
  assert not os.path.exists(tmp_path / 'report.json')


def test_eval_py_rejects_a_mismatched_export_and_keeps_old_report(tmp_path):
  export_dir = _export(str(tmp_path / 'cifar'), dataset='cifar10')
  output = tmp_path / 'report.json'
  output.write_text('{"old": true}')
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'eval.py'),
       f'--export_dir={export_dir}', '--dataset=fashion_mnist',
       f'--output={output}'],
      capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr
  assert 'eval.py: error: --export_dir:' in proc.stderr
  assert '(32, 32, 3)' in proc.stderr and '(28, 28, 1)' in proc.stderr
  assert output.read_text() == '{"old": true}'
