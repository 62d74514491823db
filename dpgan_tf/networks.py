"""Conditional DCGAN generator and critic, sized from the image shape.

The critic is the only network that touches private data, so it must not mix
examples: no batch norm (it normalises with batch statistics, which breaks
per-example clipping and leaks other examples into each gradient). Its class
conditioning is a projection (Miyato & Koyama, 2018): score = w.h + <e_y, h>,
with e_y a row of a dense layer over the one-hot label. A dense layer gives
dense per-example gradients, where an Embedding's would be IndexedSlices.

The generator never sees real data, but by default its samples are paired
one-to-one with real examples inside each critic update, and each pair is one
clipped record (gan.py). Batch norm in the generator would make every fake depend on the whole
(data-dependent, Poisson-sized) batch, so that adding one real example changes
every record. The generator therefore normalises per example, with ProGAN's
pixel norm (Karras et al., 2018), which was designed to stand in for batch
norm in generators.

The generator doubles its resolution either with stride-2 transposed
convolutions (DCGAN's way) or by nearest-neighbour resizing followed by a 3x3
convolution ("resize-convolution", Odena et al., 2016), which cannot lay the
uneven kernel overlaps that print checkerboard patterns. Transposed
convolutions stay the default: the speckle of private samples comes from the
noisy critic, not from the upsampling (docs/results.md).

The critic can normalise each stride-2 convolution's output with layer norm
over (H, W, C) of its own example (Ba et al., 2016; the critic normalisation
of WGAN-GP, Gulrajani et al., 2017): per example, so clipping stays
per-example, and without gain or bias, so it adds no parameters to noise and
the ghost-clipping engine still covers every trainable variable.
"""

import contextlib
from typing import Tuple

from absl import logging
import tensorflow as tf

from dpgan_tf import config as config_lib

keras = tf.keras

# --compute_dtype -> the Keras dtype policy the networks are built with.
_POLICIES = {'float32': 'float32', 'bfloat16': 'mixed_bfloat16'}
# The dtype of the per-element layers (activations, normalisations) under
# any policy: TensorFlow's CPU kernels for them, and their gradients, are
# slower in bfloat16 than in float32 with the casts (docs/performance.md).
_PER_ELEMENT = 'float32'
# CPU flags of the instructions oneDNN's bfloat16 kernels run on.
_BF16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')


def cpu_has_bf16_kernels() -> bool:
  """Whether this (Linux) CPU has the instructions of oneDNN's bfloat16
  kernels; without them TensorFlow emulates bfloat16 arithmetic."""
  try:
    with open('/proc/cpuinfo') as f:
      flags = f.read().split()
  except OSError:
    return False
  return any(flag in flags for flag in _BF16_CPU_FLAGS)


def _gpus_have_bf16() -> bool:
  """A GPU with bfloat16 tensor cores (compute capability 8.0 or more)."""
  gpus = tf.config.list_physical_devices('GPU')
  return bool(gpus) and all(
      tf.config.experimental.get_device_details(gpu).get(
          'compute_capability', (0, 0)) >= (8, 0) for gpu in gpus)


def _has_bf16_kernels() -> bool:
  return cpu_has_bf16_kernels() or _gpus_have_bf16()


def resolve_compute_dtype(dtype: str, grad_engine: str) -> str:
  """--compute_dtype=auto -> 'bfloat16' where bfloat16 is faster (a GPU of
  compute capability 8.0 or more, or a CPU with BF16 instructions) and the
  engine supports it, else 'float32', logged with the reason; other values
  are returned as they are. Resolved before the run's flags are recorded,
  so that a resume on hardware that resolves otherwise is refused, naming
  --compute_dtype."""
  if dtype != 'auto':
    return dtype
  if grad_engine == 'jacobian':
    logging.info('--compute_dtype=auto: float32, as --grad_engine=jacobian '
                 'clips at C, not at the bound that covers bfloat16 '
                 'rounding.')
    return 'float32'
  if _has_bf16_kernels():
    logging.info('--compute_dtype=auto: bfloat16, as this host has a GPU '
                 'with bfloat16 tensor cores or a CPU with one of %s.',
                 ', '.join(_BF16_CPU_FLAGS))
    return 'bfloat16'
  logging.info('--compute_dtype=auto: float32, as this host has neither a '
               'GPU with bfloat16 tensor cores nor a CPU with one of %s '
               '(TensorFlow would emulate bfloat16, slower than float32).',
               ', '.join(_BF16_CPU_FLAGS))
  return 'float32'


@contextlib.contextmanager
def compute_dtype(dtype: str):
  """Layers built inside compute in `dtype` ('float32' or 'bfloat16'); their
  variables stay float32 (Keras's mixed_bfloat16 policy), and the networks'
  outputs are cast back to float32. Only the convolutions and dense layers
  run in bfloat16: the per-element layers stay float32 (_PER_ELEMENT).
  float32 is train.py's default, the arithmetic everything was first
  measured in; the presets ask for 'auto' (resolve_compute_dtype), having
  measured the same accuracy in bfloat16 (docs/performance.md)."""
  if dtype not in _POLICIES:
    raise ValueError(f'--compute_dtype={dtype!r}: choose one of '
                     f'{tuple(_POLICIES)} (resolve_compute_dtype turns '
                     '"auto" into one of them).')
  if dtype == 'bfloat16' and not _has_bf16_kernels():
    logging.warning('--compute_dtype=bfloat16: this CPU has none of %s, so '
                    'TensorFlow emulates bfloat16 and the networks will run '
                    'slower than in float32.', ', '.join(_BF16_CPU_FLAGS))
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(_POLICIES[dtype])
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)


class PixelNorm(keras.layers.Layer):
  """Scales each pixel's feature vector to unit RMS, per example."""

  def call(self, x):
    return x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), -1, keepdims=True) +
                             1e-8)


def _num_upsamplings(image_shape: Tuple[int, int, int]) -> int:
  """Stride-2 layers between the image and the networks' base (6 to 12
  pixels: config.image_halvings)."""
  height, width, _ = image_shape
  halvings = config_lib.image_halvings(height)
  if height != width or halvings is None:
    raise ValueError(f'image shape {image_shape} is not supported; the '
                     'networks are built for square images whose side '
                     'halves at least twice down to 6-12 pixels (28, 32, '
                     '64, 96, 128, ...).')
  return halvings


def _upsample(x, filters: int, upsampling: str):
  """Doubles the resolution of x and maps it to `filters` channels."""
  if upsampling == 'transposed':
    return keras.layers.Conv2DTranspose(filters, 4, 2, 'same')(x)
  if upsampling == 'resize':
    x = keras.layers.UpSampling2D(2, interpolation='nearest')(x)
    return keras.layers.Conv2D(filters, 3, padding='same')(x)
  raise ValueError(f'upsampling {upsampling!r}: choose one of '
                   f'{config_lib.UPSAMPLINGS}.')


def build_generator(image_shape: Tuple[int, int, int],
                    num_classes: int,
                    latent_dim: int = 64,
                    width: int = 64,
                    upsampling: str = 'transposed') -> keras.Model:
  """Generator: (noise [B, latent_dim], labels [B]) -> images [B, H, W, C].

  Images come out of a tanh, in [-1, 1]. The label embedding is concatenated
  to the noise, then a dense layer feeds a stack of upsamplings (`upsampling`,
  see module doc), each doubling the resolution. Every output depends on its
  own (noise, label) only (see module doc).
  """
  num_up = _num_upsamplings(image_shape)
  height, _, channels = image_shape
  start = height // 2**num_up
  noise = keras.Input((latent_dim,), name='noise')
  labels = keras.Input((), dtype=tf.int32, name='labels')
  embedded = keras.layers.Embedding(num_classes, latent_dim,
                                    name='label_embedding')(labels)
  x = keras.layers.Concatenate()([noise, embedded])
  filters = width * 2**num_up
  x = keras.layers.Dense(start * start * filters)(x)
  x = keras.layers.Reshape((start, start, filters))(x)
  x = PixelNorm(dtype=_PER_ELEMENT)(
      keras.layers.LeakyReLU(0.2, dtype=_PER_ELEMENT)(x))
  for _ in range(num_up - 1):
    filters //= 2
    x = _upsample(x, filters, upsampling)
    x = PixelNorm(dtype=_PER_ELEMENT)(
      keras.layers.LeakyReLU(0.2, dtype=_PER_ELEMENT)(x))
  x = _upsample(x, channels, upsampling)
  images = keras.layers.Activation('tanh', dtype='float32', name='images')(x)
  return keras.Model([noise, labels], images, name='generator')


def build_critic(image_shape: Tuple[int, int, int],
                 num_classes: int,
                 width: int = 32,
                 norm: str = 'none') -> keras.Model:
  """Critic: (images [B, H, W, C] in [-1, 1], labels [B]) -> scores [B].

  Stride-2 convolutions with LeakyReLU, no batch statistics (`norm`: none or
  per-example layer norm; see module doc), then a projection head. Every
  output depends on its own example only.
  """
  if norm not in config_lib.CRITIC_NORMS:
    raise ValueError(f'critic norm {norm!r}: choose one of '
                     f'{config_lib.CRITIC_NORMS}.')
  num_down = _num_upsamplings(image_shape)
  images = keras.Input(image_shape, name='images')
  labels = keras.Input((), dtype=tf.int32, name='labels')
  x = images
  for i in range(num_down):
    x = keras.layers.Conv2D(width * 2**i, 4, 2, 'same')(x)
    if norm == 'layer':
      x = keras.layers.LayerNormalization(axis=(1, 2, 3), center=False,
                                          scale=False, dtype=_PER_ELEMENT)(x)
    x = keras.layers.LeakyReLU(0.2, dtype=_PER_ELEMENT)(x)
  # float32 features: the projection sums thousands of products.
  features = keras.layers.Flatten(dtype=_PER_ELEMENT)(x)
  unconditional = keras.layers.Dense(1, name='score')(features)
  one_hot = tf.one_hot(labels, num_classes)
  class_embedding = keras.layers.Dense(features.shape[-1], use_bias=False,
                                       name='class_projection')(one_hot)
  if class_embedding.dtype != features.dtype:  # bfloat16 dense layers.
    unconditional = tf.cast(unconditional, features.dtype)
    class_embedding = tf.cast(class_embedding, features.dtype)
  projection = tf.reduce_sum(class_embedding * features, axis=-1,
                             keepdims=True)
  scores = keras.layers.Flatten(name='scores')(unconditional + projection)
  scores = keras.layers.Reshape((), dtype='float32')(scores)
  return keras.Model([images, labels], scores, name='critic')
