"""Every default output depends on private data only through the noised
critic updates.

With the critic's learning rate at 0 its noised updates change nothing, so
whatever else a default output reads from the real data shows as a
difference between runs on different data. Opt-in `nonprivate_*` outputs
are the control: they must differ, or the test could not see a leak.
"""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from dpgan_tf import config as config_lib
from dpgan_tf import data as data_lib
from dpgan_tf import export
from dpgan_tf import gan
from dpgan_tf import networks
from dpgan_tf import privacy
from dpgan_tf import training
from test_training import tiny_config

SHAPE, CLASSES, LATENT = (28, 28, 1), 10, 4


def _frozen_critic_model(fake_gradient):
  """A small model whose critic optimizer applies its noised update at
  learning rate 0; same weights every call."""
  tf.keras.utils.set_random_seed(3)
  model = gan.ConditionalDPGAN(
      networks.build_generator(SHAPE, CLASSES, latent_dim=LATENT, width=4),
      networks.build_critic(SHAPE, CLASSES, width=4), privacy.PrivacyLedger(),
      gan.GANOptions(num_classes=CLASSES, latent_dim=LATENT,
                     expected_batch_size=8, fake_gradient=fake_gradient,
                     nonprivate_diagnostics=True), seed=5)
  critic_optimizer, generator_optimizer = training.make_optimizers(
      config_lib.TrainConfig(), 1.0, model.noise_seed)
  critic_optimizer.learning_rate = 0.0
  model.compile(critic_optimizer, generator_optimizer)
  return model


def _batch(labels, seed):
  rng = np.random.default_rng(seed)
  return (tf.constant(rng.integers(0, 256, (len(labels), *SHAPE)), tf.uint8),
          tf.constant(labels, tf.int32))


@pytest.mark.parametrize('fake_gradient', config_lib.FAKE_GRADIENTS)
def test_default_metrics_and_generator_ignore_the_real_batch(fake_gradient):
  """Different labels, different sizes, an empty batch: one train_step from
  the same weights gives the same default metrics and generator."""
  results = []
  for labels, seed in (([0, 0, 0], 0), ([0, 0, 7], 1), ([0, 0], 2),
                       ([], 3)):
    model = _frozen_critic_model(fake_gradient)
    metrics = model.train_step((_batch(labels, seed),))
    results.append(({k: float(v) for k, v in metrics.items()},
                    model.generator.get_weights()))
  first_metrics, first_weights = results[0]
  defaults = [k for k in first_metrics if not k.startswith('nonprivate_')]
  assert 'critic_loss_fake' in defaults and 'generator_loss' in defaults
  for metrics, weights in results[1:]:
    assert {k: metrics[k] for k in defaults} == {
        k: first_metrics[k] for k in defaults}
    for a, b in zip(weights, first_weights):
      np.testing.assert_array_equal(a, b)
  # The control: the opt-in diagnostics do read the batch.
  sizes = {m['nonprivate_batch_size'] for m, _ in results}
  assert sizes == {3.0, 2.0, 0.0}


def _scalars(log_dir):
  """{(tag, step): value} of every scalar but wall-clock speed."""
  found = {}
  for name in sorted(os.listdir(log_dir)):
    for event in tf.compat.v1.train.summary_iterator(
        os.path.join(log_dir, name)):
      for v in event.summary.value:
        if v.metadata.plugin_data.plugin_name == 'scalars' and not (
            v.tag.startswith('speed/')):
          found[(v.tag, event.step)] = tf.make_ndarray(v.tensor).item()
  return found


def _run_on(tmp_path, tfds_dir, monkeypatch, caplog, transform, name):
  """A tiny run on transform(training data) with a frozen critic: its
  scalars, the package's log lines, samples and export metadata (the
  libraries' own lines, such as Keras's slow-callback timing warnings, are
  not the package's outputs)."""
  load_split = data_lib.load_split

  def transformed(*args, **kwargs):
    split = load_split(*args, **kwargs)
    images, labels = transform(split.images, split.labels)
    return data_lib.LabeledImages(images, labels, split.spec)

  def frozen_critic(*args):
    critic_optimizer, generator_optimizer = make_optimizers(*args)
    critic_optimizer.learning_rate = 0.0
    return critic_optimizer, generator_optimizer

  make_optimizers = training.make_optimizers
  monkeypatch.setattr(training.data_lib, 'load_split', transformed)
  monkeypatch.setattr(training, 'make_optimizers', frozen_critic)
  config = tiny_config(tmp_path / name, tfds_dir, log_every=2)
  caplog.clear()
  with caplog.at_level(logging.INFO, logger='absl'):
    training.train(config)
  package = os.path.dirname(training.__file__)
  lines = [r.getMessage() for r in caplog.records
           if os.path.dirname(r.pathname) == package]
  monkeypatch.undo()
  metadata = export.latest_metadata(config.export_dir)
  with open(os.path.join(config.model_dir, 'samples.png'), 'rb') as f:
    samples = f.read()
  return (_scalars(os.path.join(config.model_dir, 'train')), lines,
          samples, metadata)


def test_default_outputs_of_a_run_ignore_the_real_data(tmp_path, tfds_dir,
                                                       monkeypatch, caplog):
  """Same size, other images and labels: every default TensorBoard scalar,
  log line, sample grid and export metadata is the same."""
  same = _run_on(tmp_path, tfds_dir, monkeypatch, caplog,
                 lambda images, labels: (images, labels), 'a')
  other = _run_on(tmp_path, tfds_dir, monkeypatch, caplog,
                  lambda images, labels: (255 - images[::-1],
                                          (labels[::-1] + 3) % 10), 'b')
  scalars, lines, samples, metadata = same
  assert any(tag == 'loss/critic_loss_fake' for tag, _ in scalars)
  assert any(line.startswith('step ') for line in lines)
  assert other[0] == scalars
  # Log lines name their run's directories; nothing else may differ.
  assert [l.replace(str(tmp_path / 'b'), 'RUN') for l in other[1]] == [
      l.replace(str(tmp_path / 'a'), 'RUN') for l in lines]
  assert other[2] == samples
  assert other[3] == metadata
