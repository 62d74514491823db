"""The fixed CNNs behind downstream accuracy and the `domain_fid` features.

Train-on-synthetic/test-on-real accuracy is only comparable across runs if
the classifier and its schedule never change, so both are fixed here, not
flags, and the last weights are evaluated: no early stopping and no choice of
epoch, hence nothing is selected on the real test set.

Downstream classifier (version DOWNSTREAM_VERSION; input: images [H, W, C],
float32 in [0, 1]), the CNN of Keras 2's `examples/mnist_cnn.py`:
  Conv2D 32, 3x3, ReLU; Conv2D 64, 3x3, ReLU; MaxPool 2x2; Dropout 0.25
  Flatten, Dense 128, ReLU; Dropout 0.5
  Dense num_classes                 <- logits
Schedule: Adam (lr 1e-3), batch 128, cross-entropy, DOWNSTREAM.epochs epochs
over a seeded shuffle. It replaced (version 1) the feature network below as
the downstream classifier: trained on the same synthetic samples it carries
over better to real images (measured on the validation split only;
docs/results.md).

Feature network (version FEATURE_VERSION):
  Conv2D 32, 3x3, stride 2, ReLU
  Conv2D 64, 3x3, stride 2, ReLU
  Flatten, Dense 128, ReLU          <- layer 'features' (penultimate)
  Dense num_classes                 <- logits
trained on the real training split (FEATURE schedule), is the feature
extractor for the Fréchet distance and precision/recall in the dataset's own
feature space. Strided convolutions keep its training on 60000 images at
about a minute on 2 CPU cores. It is cached per dataset (see
`load_or_train_feature_classifier`); FEATURE_VERSION is part of the cache key
so a change here never reuses stale weights.
"""

import dataclasses
import os
from typing import Callable, List, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from dpgan_tf import files

keras = tf.keras

DOWNSTREAM_VERSION = 2
FEATURE_VERSION = 1
FEATURE_LAYER = 'features'


@dataclasses.dataclass(frozen=True)
class Schedule:
  """How a classifier is trained; fixed so that runs stay comparable."""
  epochs: int
  batch_size: int = 128
  learning_rate: float = 1e-3


DOWNSTREAM = Schedule(epochs=5)
# Feature classifier: two epochs over at most FEATURE_TRAIN_EXAMPLES real
# training examples (the whole split for (Fashion-)MNIST; ~1 minute once).
FEATURE = Schedule(epochs=2)
FEATURE_TRAIN_EXAMPLES = 60000


def describe() -> dict:
  """The architecture and schedules, for the report."""
  return {
      'architecture': ('conv32-3x3-relu, conv64-3x3-relu, maxpool2, '
                       'dropout0.25, dense128-relu, dropout0.5, '
                       'dense-num_classes (logits)'),
      'architecture_version': DOWNSTREAM_VERSION,
      'downstream_schedule': dataclasses.asdict(DOWNSTREAM),
      'feature_architecture': ('conv32-3x3-s2-relu, conv64-3x3-s2-relu, '
                               'dense128-relu (features), '
                               'dense-num_classes (logits)'),
      'feature_architecture_version': FEATURE_VERSION,
      'feature_schedule': dataclasses.asdict(FEATURE),
      'optimizer': 'adam',
      'selection': 'none (last weights evaluated)',
  }


def _cnn(image_shape: Tuple[int, int, int], num_classes: int,
         body: List[keras.layers.Layer], name: str) -> keras.Model:
  """images [B, H, W, C] in [0, 1] -> body -> logits [B, num_classes]."""
  images = keras.Input(image_shape, name='images')
  x = images
  for layer in body:
    x = layer(x)
  logits = keras.layers.Dense(num_classes, name='logits')(x)
  return keras.Model(images, logits, name=name)


def build_downstream_classifier(image_shape: Tuple[int, int, int],
                                num_classes: int) -> keras.Model:
  """The downstream classifier (see module doc)."""
  layers = keras.layers
  return _cnn(image_shape, num_classes, [
      layers.Conv2D(32, 3, activation='relu'),
      layers.Conv2D(64, 3, activation='relu'),
      layers.MaxPooling2D(),
      layers.Dropout(0.25),
      layers.Flatten(),
      layers.Dense(128, activation='relu', name=FEATURE_LAYER),
      layers.Dropout(0.5),
  ], 'classifier')


def build_feature_network(image_shape: Tuple[int, int, int],
                          num_classes: int) -> keras.Model:
  """The feature network behind domain_fid (see module doc)."""
  layers = keras.layers
  return _cnn(image_shape, num_classes, [
      layers.Conv2D(32, 3, 2, 'same', activation='relu'),
      layers.Conv2D(64, 3, 2, 'same', activation='relu'),
      layers.Flatten(),
      layers.Dense(128, activation='relu', name=FEATURE_LAYER),
  ], 'feature_network')


def _dataset(images: np.ndarray, labels: Optional[np.ndarray], batch_size: int,
             shuffle_seed: Optional[int] = None) -> tf.data.Dataset:
  """Batches of float32 images in [0, 1]; uint8 inputs are scaled on the fly.

  Converting per batch keeps uint8 splits 4x smaller in memory.
  """
  ds = tf.data.Dataset.from_tensor_slices(
      images if labels is None else (images, labels))
  if shuffle_seed is not None:
    ds = ds.shuffle(len(images), seed=shuffle_seed,
                    reshuffle_each_iteration=True)
  to_float = lambda x: tf.image.convert_image_dtype(x, tf.float32)
  if labels is None:
    ds = ds.map(to_float)
  else:
    ds = ds.map(lambda x, y: (to_float(x), y))
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class _EpochLogger(keras.callbacks.Callback):
  """Progress lines for long fits (absl logging, not a progress bar)."""

  def __init__(self, name: str, epochs: int):
    super().__init__()
    self.name = name
    self.epochs = epochs

  def on_epoch_end(self, epoch, logs=None):
    logging.info('%s classifier: epoch %d/%d loss=%.4f accuracy=%.4f',
                 self.name, epoch + 1, self.epochs, logs['loss'],
                 logs['accuracy'])


def train_classifier(images: np.ndarray, labels: np.ndarray,
                     image_shape: Tuple[int, int, int], num_classes: int,
                     schedule: Schedule, seed: int,
                     name: str = 'downstream',
                     build: Callable[..., keras.Model] = (
                         build_downstream_classifier)) -> keras.Model:
  """Trains a fresh `build(image_shape, num_classes)` with `schedule`.

  Args:
    images: uint8 [N, H, W, C] or float32 in [0, 1].
    labels: int [N].
    image_shape: (H, W, C).
    num_classes: number of logits.
    schedule: epochs, batch size and learning rate.
    seed: initialisation and shuffling.
    name: for progress lines.
    build: the architecture (the downstream classifier by default).

  Returns:
    The trained model (last weights).
  """
  tf.keras.utils.set_random_seed(seed)
  model = build(image_shape, num_classes)
  model.compile(
      keras.optimizers.Adam(schedule.learning_rate),
      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      ['accuracy'])
  model.fit(_dataset(images, labels, schedule.batch_size, shuffle_seed=seed),
            epochs=schedule.epochs, verbose=0,
            callbacks=[_EpochLogger(name, schedule.epochs)])
  return model


def accuracy(model: keras.Model, images: np.ndarray,
             labels: np.ndarray) -> float:
  logits = model.predict(_dataset(images, None, 1024), verbose=0)
  return float(np.mean(np.argmax(logits, axis=-1) == labels))


def features(model: keras.Model, images: np.ndarray) -> np.ndarray:
  """Penultimate-layer activations [N, 128] of `images`."""
  extractor = keras.Model(model.input, model.get_layer(FEATURE_LAYER).output)
  return extractor.predict(_dataset(images, None, 1024), verbose=0)


def feature_classifier_path(cache_dir: str, dataset: str,
                            num_examples: int) -> str:
  return os.path.join(
      cache_dir, 'dpgan_eval',
      f'{dataset}-feature-classifier-v{FEATURE_VERSION}-'
      f'n{num_examples}-e{FEATURE.epochs}.h5')


def load_or_train_feature_classifier(
    dataset: str, images: np.ndarray, labels: np.ndarray,
    image_shape: Tuple[int, int, int], num_classes: int, cache_dir: str,
    seed: int = 0) -> Tuple[keras.Model, dict]:
  """The dataset's feature classifier, from the cache or trained and cached.

  Args:
    dataset: the cache key's dataset name (data.DatasetSpec.key).
    images: real training images (the first FEATURE_TRAIN_EXAMPLES are used).
    labels: their labels.
    image_shape: (H, W, C).
    num_classes: number of classes.
    cache_dir: directory for the weights (created if needed).
    seed: initialisation and shuffling when training.

  Returns:
    (model, info) with info {'path', 'cached', 'train_examples'}. An
    unreadable cache file is retrained and replaced, never trusted.
  """
  n = min(len(images), FEATURE_TRAIN_EXAMPLES)
  path = feature_classifier_path(cache_dir, dataset, n)
  model = build_feature_network(image_shape, num_classes)
  if os.path.isfile(path):
    try:
      model.load_weights(path)
      logging.info('Feature classifier loaded from %s', path)
      return model, {'path': path, 'cached': True, 'train_examples': n}
    except (OSError, ValueError) as e:
      logging.warning('Retraining the feature classifier: %s is unreadable '
                      '(%s).', path, e)
  logging.info('Training the %s feature classifier on %d real examples '
               '(cached afterwards in %s).', dataset, n, path)
  model = train_classifier(images[:n], labels[:n], image_shape, num_classes,
                           FEATURE, seed, name='feature',
                           build=build_feature_network)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # Keras picks the format from the extension, which the staging path keeps.
  files.replace_atomically(path, model.save_weights)
  return model, {'path': path, 'cached': False, 'train_examples': n}
