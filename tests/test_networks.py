"""Network shapes, ranges, and that no network mixes examples."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from dpgan_tf import config as config_lib
from dpgan_tf import networks


@pytest.mark.parametrize('upsampling', config_lib.UPSAMPLINGS)
@pytest.mark.parametrize('shape', [(28, 28, 1), (32, 32, 3), (64, 64, 3),
                                   (96, 96, 3), (128, 128, 3)])
def test_shapes_and_ranges(shape, upsampling):
  generator = networks.build_generator(shape, 10, latent_dim=16, width=8,
                                       upsampling=upsampling)
  critic = networks.build_critic(shape, 10, width=8)
  labels = tf.constant([0, 3, 9])
  images = generator([tf.random.normal([3, 16]), labels])
  assert images.shape == (3,) + shape
  assert float(tf.reduce_max(tf.abs(images))) <= 1.0
  assert critic([images, labels]).shape == (3,)


def test_no_batch_norm_anywhere():
  for model in (*(networks.build_generator((28, 28, 1), 10, upsampling=u)
                  for u in config_lib.UPSAMPLINGS),
                *(networks.build_critic((28, 28, 1), 10, norm=n)
                  for n in config_lib.CRITIC_NORMS)):
    assert not any(isinstance(l, tf.keras.layers.BatchNormalization)
                   for l in model.layers)


@pytest.mark.parametrize('upsampling,critic_norm',
                         zip(config_lib.UPSAMPLINGS,
                             config_lib.CRITIC_NORMS[::-1]))
def test_outputs_depend_on_own_example_only(upsampling, critic_norm):
  """Per-example clipping and record pairing rely on this (see networks.py)."""
  generator = networks.build_generator((28, 28, 1), 10, latent_dim=16, width=8,
                                       upsampling=upsampling)
  critic = networks.build_critic((28, 28, 1), 10, width=8, norm=critic_norm)
  noise, labels = tf.random.normal([5, 16]), tf.constant([1, 2, 3, 4, 5])
  batch = generator([noise, labels], training=True)
  single = generator([noise[:1], labels[:1]], training=True)
  np.testing.assert_allclose(batch[:1], single, atol=1e-5)
  scores = critic([batch, labels], training=True)
  np.testing.assert_allclose(scores[:1], critic([batch[:1], labels[:1]]),
                             atol=1e-5)


def test_critic_conditions_on_the_label():
  critic = networks.build_critic((28, 28, 1), 10, width=8)
  image = tf.random.normal([1, 28, 28, 1])
  assert float(critic([image, tf.constant([0])])) != float(
      critic([image, tf.constant([1])]))


@pytest.mark.parametrize('shape', [(30, 30, 3), (100, 100, 3),
                                   (16, 16, 1), (24, 24, 3), (64, 32, 3)])
def test_unsupported_shape_is_rejected(shape):
  with pytest.raises(ValueError, match='not supported'):
    networks.build_critic(shape, 10)


@pytest.mark.parametrize('side,base', [(28, 7), (32, 8), (64, 8), (96, 12),
                                       (128, 8), (256, 8)])
def test_the_critic_halves_down_to_the_base(side, base):
  critic = networks.build_critic((side, side, 3), 2, width=2)
  last_conv = [l for l in critic.layers
               if isinstance(l, tf.keras.layers.Conv2D)][-1]
  assert last_conv.output.shape[1:3] == (base, base)


def test_upsamplings_build_different_layers():
  """--generator_upsampling changes the network, not only its name."""
  layers = {u: {type(l).__name__ for l in networks.build_generator(
      (28, 28, 1), 10, upsampling=u).layers} for u in config_lib.UPSAMPLINGS}
  assert 'Conv2DTranspose' in layers['transposed']
  assert 'UpSampling2D' not in layers['transposed']
  assert {'UpSampling2D', 'Conv2D'} <= layers['resize']
  assert 'Conv2DTranspose' not in layers['resize']


def test_unknown_upsampling_is_rejected():
  with pytest.raises(ValueError, match="upsampling 'bilinear'"):
    networks.build_generator((28, 28, 1), 10, upsampling='bilinear')


def test_critic_layer_norm_normalises_each_example_without_parameters():
  """--critic_norm=layer: every conv output has zero mean and unit variance
  per example, whatever the batch, and the trainable variables are those of
  the unnormalised critic (nothing extra to clip and noise)."""
  plain = networks.build_critic((28, 28, 1), 10, width=8)
  normed = networks.build_critic((28, 28, 1), 10, width=8, norm='layer')
  assert ([v.shape for v in normed.trainable_variables] ==
          [v.shape for v in plain.trainable_variables])
  norms = [l for l in normed.layers
           if isinstance(l, tf.keras.layers.LayerNormalization)]
  assert len(norms) == 2
  probe = tf.keras.Model(normed.inputs, [l.output for l in norms])
  # Different scales per example; not tiny ones, where the layer's epsilon
  # (1e-3, added to the variance) dominates.
  images = tf.random.normal([3, 28, 28, 1]) * tf.constant([[[[1.]]], [[[5.]]],
                                                           [[[2.]]]])
  for out in probe([images, tf.constant([0, 1, 2])]):
    np.testing.assert_allclose(tf.reduce_mean(out, axis=(1, 2, 3)), 0,
                               atol=1e-4)
    np.testing.assert_allclose(tf.math.reduce_std(out, axis=(1, 2, 3)), 1,
                               rtol=1e-2)


def test_unknown_critic_norm_is_rejected():
  with pytest.raises(ValueError, match="critic norm 'batch'"):
    networks.build_critic((28, 28, 1), 10, norm='batch')


@pytest.mark.parametrize('bf16_cpu,gpu_capabilities,expected', [
    (True, [], 'bfloat16'), (False, [(8, 0)], 'bfloat16'),
    (False, [(7, 5)], 'float32'), (False, [], 'float32')])
def test_auto_compute_dtype_is_bfloat16_only_where_it_has_kernels(
    monkeypatch, caplog, bf16_cpu, gpu_capabilities, expected):
  monkeypatch.setattr(networks, 'cpu_has_bf16_kernels', lambda: bf16_cpu)
  monkeypatch.setattr(tf.config, 'list_physical_devices',
                      lambda kind: list(range(len(gpu_capabilities))))
  monkeypatch.setattr(tf.config.experimental, 'get_device_details',
                      lambda gpu: {'compute_capability': gpu_capabilities[gpu]})
  with caplog.at_level(logging.INFO, logger='absl'):
    assert networks.resolve_compute_dtype('auto', 'ghost') == expected
  assert f'--compute_dtype=auto: {expected}, as this host has' in caplog.text
  assert 'avx512_bf16' in caplog.text
  # The jacobian engine clips at C: float32 whatever the hardware.
  assert networks.resolve_compute_dtype('auto', 'jacobian') == 'float32'
  for explicit in ('float32', 'bfloat16'):
    assert networks.resolve_compute_dtype(explicit, 'ghost') == explicit


def test_unresolved_auto_compute_dtype_is_rejected_when_building():
  with pytest.raises(ValueError, match='resolve_compute_dtype'):
    with networks.compute_dtype('auto'):
      pass
