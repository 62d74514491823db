"""The fixed downstream CNN, the feature network and its cache."""

import os

import numpy as np
import pytest

from dpgan_tf import classifier

SHAPE = (28, 28, 1)


def _toy_data(n=300, seed=0):
  """Two classes a CNN separates at once: bright top half vs bright bottom."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(2, size=n).astype(np.int32)
  images = rng.integers(0, 60, size=(n,) + SHAPE).astype(np.uint8)
  for i, label in enumerate(labels):
    rows = slice(0, 14) if label == 0 else slice(14, 28)
    images[i, rows] += 150
  return images, labels


def test_architectures_are_fixed():
  downstream = classifier.build_downstream_classifier(SHAPE, 10)
  feature_network = classifier.build_feature_network(SHAPE, 10)
  assert [type(l).__name__ for l in downstream.layers] == [
      'InputLayer', 'Conv2D', 'Conv2D', 'MaxPooling2D', 'Dropout', 'Flatten',
      'Dense', 'Dropout', 'Dense']
  assert [type(l).__name__ for l in feature_network.layers] == [
      'InputLayer', 'Conv2D', 'Conv2D', 'Flatten', 'Dense', 'Dense']
  for model in (downstream, feature_network):
    assert model.output_shape == (None, 10)
    assert model.get_layer(classifier.FEATURE_LAYER).output_shape == (None,
                                                                      128)
  # Keras 2's examples/mnist_cnn.py: 1,199,882 parameters at 28x28x1, 10
  # classes.
  assert downstream.count_params() == 1199882
  described = classifier.describe()
  assert described['downstream_schedule'] == {
      'epochs': 5, 'batch_size': 128, 'learning_rate': 1e-3}
  assert (described['architecture_version'],
          described['feature_architecture_version']) == (2, 1)


def test_train_accuracy_and_features_on_uint8_and_float_images():
  images, labels = _toy_data()
  model = classifier.train_classifier(images, labels, SHAPE, 2,
                                      classifier.Schedule(epochs=3), seed=0)
  test_images, test_labels = _toy_data(seed=1)
  assert classifier.accuracy(model, test_images, test_labels) > 0.95
  # float [0, 1] inputs (generated samples) are the same images.
  as_float = test_images.astype(np.float32) / 255
  assert classifier.accuracy(model, as_float, test_labels) == (
      classifier.accuracy(model, test_images, test_labels))
  np.testing.assert_allclose(classifier.features(model, as_float),
                             classifier.features(model, test_images),
                             rtol=1e-5, atol=1e-5)
  assert classifier.features(model, test_images).shape == (300, 128)


def test_training_is_seeded():
  images, labels = _toy_data(n=64)
  runs = [classifier.train_classifier(images, labels, SHAPE, 2,
                                      classifier.Schedule(epochs=1), seed=4)
          for _ in range(2)]
  np.testing.assert_array_equal(classifier.features(runs[0], images),
                                classifier.features(runs[1], images))


def test_feature_classifier_is_cached_and_a_corrupt_cache_retrained(
    tmp_path, monkeypatch):
  monkeypatch.setattr(classifier, 'FEATURE', classifier.Schedule(epochs=1))
  images, labels = _toy_data(n=200)
  load = lambda: classifier.load_or_train_feature_classifier(
      'toy', images, labels, SHAPE, 2, str(tmp_path))
  model, info = load()
  assert not info['cached'] and info['train_examples'] == 200
  assert info['path'] == classifier.feature_classifier_path(str(tmp_path),
                                                            'toy', 200)
  assert os.listdir(os.path.dirname(info['path'])) == [
      os.path.basename(info['path'])]  # No staging file left behind.
  cached, info = load()
  assert info['cached']
  # The cache holds the feature network, never the downstream classifier.
  assert model.name == cached.name == 'feature_network'
  np.testing.assert_array_equal(classifier.features(model, images),
                                classifier.features(cached, images))
  with open(info['path'], 'wb') as f:
    f.write(b'corrupt')
  _, info = load()
  assert not info['cached']
  _, info = load()
  assert info['cached']


@pytest.mark.parametrize('num_examples', [100, 60000])
def test_cache_key_names_dataset_size_and_version(num_examples):
  path = classifier.feature_classifier_path('/c', 'mnist', num_examples)
  assert path == (f'/c/dpgan_eval/mnist-feature-classifier-v'
                  f'{classifier.FEATURE_VERSION}-n{num_examples}-e'
                  f'{classifier.FEATURE.epochs}.h5')
