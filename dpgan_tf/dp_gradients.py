"""Private critic gradients: clip each microbatch, sum, add noise once, average.

Three engines compute the same mechanism:

* `jacobian`: the DP optimizer's own path (`DPKerasAdamOptimizer`
  `_compute_gradients`), a `tape.jacobian` over the microbatch losses. Its
  cost grows with batch size x microbatches: the reference, not for
  training.
* `vectorized`: one forward and backward pass per microbatch, vectorised by
  `tf.vectorized_map` into batched kernels. The critic never mixes examples,
  so these passes are exactly the per-microbatch gradients. Works for any
  critic and loss, but batched per-example convolution kernels are slow on
  CPU.
* `ghost` (default): layer-wise clipping from one ordinary forward and
  backward pass (Goodfellow 2015; Li et al. 2022, "ghost clipping"; Bu et al.
  2022, "mixed ghost clipping"). For a Dense or Conv2D layer the gradient of
  example i is A_i^T D_i, with A_i its (patch-extracted) layer inputs and D_i
  the loss gradient at the layer's outputs, summed over every call of the
  layer (the critic scores real and fake: two calls per record). Its squared
  norm is either sum((A_i^T D_i)^2) or, without forming it, the "ghost norm"
  sum((A_i A_i^T) * (D_i D_i^T)); per layer a rule on its shapes picks the
  cheaper (ghost_norm_is_cheaper). The clipped sum is then
  sum_i w_i A_i^T D_i, from the per-example gradients when they were formed,
  else one matmul per layer. The backward pass stops at layer outputs and
  this replaces the weight-gradient part of a plain backward pass, so the
  step costs little more than a plain one (benchmarks/critic_step.py prints
  the ratio; docs/performance.md). Keras has no
  per-call hook that exposes a layer's inputs and outputs to a tape, so the
  layers' `call` is wrapped while the loss is traced, and restored after.
  It needs every trainable variable to be the kernel or bias of a Dense or
  Conv2D layer with linear activation, and a loss that is a function of the
  critic's outputs: a gradient penalty (wgan_gp) differentiates the critic
  w.r.t. its input, so the penalty's weight gradient is not of the form
  A^T D. In either case this engine falls back to `vectorized` (logged).

Whatever the engine, per-microbatch gradients are clipped to the DP
optimizer's clip norm by its Gaussian query's own rule (clip by global norm
per record, computed batched since `tf.clip_by_global_norm` has no
vectorised form) and summed. The ghost and vectorized engines are the
gradient computation of the critic's DP optimizer
(`privacy.DPCriticAdamOptimizer`), which noises the sum with its query's
`get_noised_result`: the same clipping and noise as the jacobian path.

With `--compute_dtype=bfloat16` the critic's layers compute in bfloat16
(networks.compute_dtype): the ghost engine records bfloat16 layer inputs and
output gradients, while per-microbatch norms, clip factors, the clipped sum
and the noise stay float32 (see _kernel_gradients). A gradient formed in
bfloat16 keeps 8 significant bits: each element is within 2^-9 (relative)
of the same product accumulated in float32, so the norm of a record's
gradient in float32 on the same bfloat16 activations may exceed the
measured one by that much. The engines then clip at C / (1 + eta), with
eta = BFLOAT16_NORM_ERROR = 2^-7 bounding that relative error with room
for float32 rounding of the norms, so every record's true contribution has
norm <= C (tests/test_dp_gradients.py tries adversarial records).

All divide the noised sum by the *expected* number of microbatches, a
constant: dividing by the realised Poisson batch size would make the
normaliser data-dependent. The vectorized engine pads each batch to whole
chunks of fixed size (so the traced graph has fixed shapes and bounded
memory); padded rows are masked out of the sum and never counted. The ghost
engine's shapes follow the batch; it pads only an empty batch, to one masked
microbatch, since oneDNN's convolutions fail on an empty batch (see
pad_to_multiple). The jacobian engine skips an empty batch by `tf.cond`.
"""

import contextlib
import dataclasses
import math
from typing import Any, Callable, List, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

keras = tf.keras


# loss_fn(records) -> per-record losses [B]; records is a nest of tensors
# with a leading batch dimension.
LossFn = Callable[[object], tf.Tensor]


@dataclasses.dataclass(frozen=True)
class PrivateLoss:
  """What the critic's DP optimizer minimises, in place of a loss tensor.

  The engines re-run the loss per microbatch or while recording the layers'
  calls, so they need it as a function of the records, with the model whose
  layers they record. Public records (gan.py's public fakes) read no private
  data: their gradient is clipped at the same C but not noised.
  """
  loss_fn: LossFn
  records: Any
  model: keras.Model
  microbatch_size: int
  # The noised sum is divided by this constant, never by the realised count.
  expected_microbatches: float
  # A gradient penalty: the loss differentiates the critic w.r.t. its input.
  differentiates_inputs: bool = False
  public_loss_fn: Optional[LossFn] = None
  public_records: Any = None
  expected_public_records: float = 0.0


def _batch_size(records) -> tf.Tensor:
  return tf.shape(tf.nest.flatten(records)[0])[0]


def _group(records, microbatch_size: int):
  """[B, ...] -> [B / k, k, ...]."""
  return tf.nest.map_structure(
      lambda t: tf.reshape(t, tf.concat([[-1, microbatch_size],
                                         tf.shape(t)[1:]], 0)), records)


def pad_to_multiple(records, multiple: int):
  """Zero-pads the leading dim up to a multiple; returns (padded, mask).

  An empty batch gets one multiple of padding rows: TensorFlow's oneDNN
  convolutions (on by default on CPUs with AVX-512 VNNI/BF16) fail on an
  empty batch, which Poisson sampling and a replica's slice of a small batch
  both produce. Padded rows have mask 0.
  """
  n = _batch_size(records)
  padded_n = tf.maximum((n + multiple - 1) // multiple, 1) * multiple
  padding = padded_n - n

  def pad(t):
    # Static rank: the other dims keep their static sizes.
    return tf.pad(t, [[0, padding]] + [[0, 0]] * (t.shape.rank - 1))

  mask = tf.concat([tf.ones([n]), tf.zeros([padding])], 0)
  return tf.nest.map_structure(pad, records), mask


# eta: the bound on the relative error of a per-microbatch norm measured
# from bfloat16 activations (see module doc).
BFLOAT16_NORM_ERROR = 2.0**-7


def clip_for(clip, model: keras.Model) -> tf.Tensor:
  """The clip norm the engines apply: C, or C / (1 + eta) when `model`
  computes in bfloat16 (see module doc)."""
  clip = tf.cast(clip, tf.float32)
  if model.compute_dtype == 'float32':
    return clip
  return clip / (1.0 + BFLOAT16_NORM_ERROR)


def _clip_weights(norms: tf.Tensor, clip: tf.Tensor) -> tf.Tensor:
  """The query's rule, tf.clip_by_global_norm per record, as scales C/max(n, C)."""
  return clip / tf.maximum(norms, clip)


def per_microbatch_gradients(loss_fn: LossFn, variables: Sequence[tf.Variable],
                             grouped_records) -> List[tf.Tensor]:
  """Gradients of each microbatch's mean loss: a list of [M, *var.shape].

  `grouped_records` has leading dims [M, k]. Each microbatch runs its own
  forward pass, so nothing couples microbatches.
  """

  def one_microbatch(records):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(loss_fn(records))
    grads = tape.gradient(loss, variables,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    # Embedding-style gradients arrive as IndexedSlices; norms need dense.
    return [tf.convert_to_tensor(g) for g in grads]

  return tf.vectorized_map(one_microbatch, grouped_records)


def per_microbatch_norms(gradients: Sequence[tf.Tensor]) -> tf.Tensor:
  """Global L2 norm of each microbatch's gradient, [M]."""
  squares = [tf.reduce_sum(tf.reshape(tf.square(g), [tf.shape(g)[0], -1]), 1)
             for g in gradients]
  return tf.sqrt(tf.add_n(squares))


def clipped_sum_vectorized(clip: tf.Tensor, loss_fn: LossFn,
                           variables: Sequence[tf.Variable], records,
                           microbatch_size: int, chunk_size: int):
  """Sum over microbatches of clipped gradients, and the unclipped norms.

  Args:
    clip: C, the clip norm.
    loss_fn: per-record losses.
    variables: the critic's trainable variables.
    records: nest of [B, ...] tensors, B a multiple of microbatch_size.
    microbatch_size: records per microbatch (k).
    chunk_size: microbatches per vectorised pass; B/k is padded up to a
      multiple of it and padded microbatches are masked out.

  Returns:
    (list of summed clipped gradients, per-microbatch norms [B/k]).
  """
  grouped = _group(records, microbatch_size)
  num_microbatches = _batch_size(grouped)
  padded, mask = pad_to_multiple(grouped, chunk_size)
  num_chunks = _batch_size(padded) // chunk_size
  chunked = tf.nest.map_structure(
      lambda t: tf.reshape(t, tf.concat([[num_chunks, chunk_size],
                                         tf.shape(t)[1:]], 0)), padded)
  chunked_mask = tf.reshape(mask, [num_chunks, chunk_size])

  def body(i, sums, norms):
    chunk = tf.nest.map_structure(lambda t: t[i], chunked)
    grads = per_microbatch_gradients(loss_fn, variables, chunk)
    chunk_norms = per_microbatch_norms(grads)
    # Padded records get weight 0.
    weights = chunked_mask[i] * _clip_weights(chunk_norms, clip)
    sums = [s + tf.tensordot(weights, g, axes=1) for s, g in zip(sums, grads)]
    return i + 1, sums, norms.write(i, chunk_norms)

  sums = [tf.zeros_like(v) for v in variables]
  norms = tf.TensorArray(tf.float32, size=num_chunks)
  _, sums, norms = tf.while_loop(lambda i, *_: i < num_chunks, body,
                                 (tf.constant(0), sums, norms))
  return sums, norms.concat()[:num_microbatches]


def _is_linear(layer) -> bool:
  return layer.activation is keras.activations.linear


def _positions(t: tf.Tensor) -> tf.Tensor:
  """[B, ..., n] -> [B, positions, n]; the non-batch shape must be static."""
  return tf.reshape(t, [-1, math.prod(t.shape[1:-1]), t.shape[-1]])


def _dense_patches(layer, inputs: Sequence[tf.Tensor]) -> tf.Tensor:
  """A Dense layer's rows of inputs, every call's: [B, calls x positions, K]."""
  del layer  # Unused: a Dense layer multiplies its inputs as they are.
  return tf.concat([_positions(x) for x in inputs], 1)


def _same_padding(size: int, kernel: int, stride: int, rate: int):
  """(before, after) padding of one spatial dim, as TF's 'SAME' pads it."""
  span = (kernel - 1) * rate + 1
  total = max((-(-size // stride) - 1) * stride + span - size, 0)
  return total // 2, total - total // 2


def _conv2d_patches(layer, inputs: Sequence[tf.Tensor]) -> tf.Tensor:
  """[B, calls x output positions, kh*kw*C_in], rows ordered like the kernel.

  What tf.image.extract_patches gives for each call's inputs (all of one
  shape), concatenated; but by one gather of whole channel vectors from all
  the padded inputs, faster on CPU than extract_patches; and the patches,
  kh*kw times larger than the inputs, are never copied again. Indices are
  static.
  """
  _, height, width, channels = inputs[0].shape
  pads, taps = [], []
  for size, kernel, stride, rate in zip((height, width), layer.kernel_size,
                                        layer.strides, layer.dilation_rate):
    before, after = (_same_padding(size, kernel, stride, rate)
                     if layer.padding == 'same' else (0, 0))
    outputs = (size + before + after - (kernel - 1) * rate - 1) // stride + 1
    pads.append((before, after))
    # [outputs, kernel]: the padded coordinate each output reads at each tap.
    taps.append(np.arange(outputs)[:, None] * stride +
                np.arange(kernel)[None, :] * rate)
  padded = [tf.pad(x, [[0, 0], *pads, [0, 0]]) for x in inputs]
  _, padded_height, padded_width, _ = padded[0].shape
  grid = padded_height * padded_width
  rows, cols = taps
  # [out_h, out_w, kh, kw] -> flat index into the padded h x w grid.
  index = rows[:, None, :, None] * padded_width + cols[None, :, None, :]
  flat = tf.concat([tf.reshape(x, [-1, grid, channels]) for x in padded], 1)
  patches = tf.gather(flat, np.concatenate(
      [index.ravel() + call * grid for call in range(len(inputs))]), axis=1)
  return tf.reshape(patches, [-1, len(inputs) * rows.shape[0] * cols.shape[0],
                              rows.shape[1] * cols.shape[1] * channels])


# Layer type -> (can layer capture handle it, its input patches).
_PATCHES = {
    keras.layers.Dense: (_is_linear, _dense_patches),
    keras.layers.Conv2D: (
        lambda l: (_is_linear(l) and l.groups == 1 and
                   l.data_format == 'channels_last' and
                   l.padding in ('valid', 'same')),
        _conv2d_patches),
}


def capturable_layers(model: keras.Model):
  """The layers owning `model`'s trainable variables, or None.

  None when some trainable variable is not the kernel or bias of a Dense or
  Conv2D layer (exact types: subclasses such as Conv2DTranspose compute
  something else) that layer capture supports, or is shared by two layers
  (its gradient would be the sum of both layers' terms).
  """
  layers, owned = [], []
  for layer in model.submodules:
    supported = _PATCHES.get(type(layer), (lambda _: False,))[0]
    if supported(layer) and layer.trainable:
      layers.append(layer)
      owned.extend(v.ref() for v in layer.trainable_variables)
  if (len(set(owned)) != len(owned) or
      set(owned) != {v.ref() for v in model.trainable_variables}):
    return None
  return layers


@contextlib.contextmanager
def _recording_calls(layers, tape: tf.GradientTape):
  """Records (inputs, outputs) of every call of each layer, in `calls[i]`.

  The outputs are watched by `tape`, so it can differentiate w.r.t. them.
  """
  calls = [[] for _ in layers]

  def recording(layer, record):
    original = layer.call

    def call(inputs):
      outputs = original(inputs)
      tape.watch(outputs)
      record.append((inputs, outputs))
      return outputs

    return call

  for layer, record in zip(layers, calls):
    layer.call = recording(layer, record)
  try:
    yield calls
  finally:
    for layer in layers:
      del layer.call  # Back to the class's method.


# What writing, squaring and reading back one element of a per-microbatch
# gradient costs, in multiply-adds of the ghost norm's Gram matmuls; see
# ghost_norm_is_cheaper.
_GRADIENT_ELEMENT_COST = 32


def ghost_norm_is_cheaper(s: int, k: int, o: int) -> bool:
  """Whether a layer's clipped sum is cheaper by ghost norm than by forming
  its per-microbatch gradients (S positions, K inputs, O outputs).

  Forming them takes S*K*O multiply-adds per microbatch and M*K*O floats,
  written, squared and read back by the weighted sum; the ghost norm takes
  S*S*(K+O) multiply-adds in batched small matmuls, and its weighted sum a
  further S*K*O in one large matmul. So the ghost norm must cost less than
  the gradients' multiply-adds, S*S*(K+O) < S*K*O, and also less than their
  memory traffic, S*S*(K+O) < 32*K*O (the layer-by-layer timings behind
  the constant are in docs/performance.md).
  """
  return s * s * (k + o) < min(s, _GRADIENT_ELEMENT_COST) * k * o


def _kernel_gradients(a: tf.Tensor, d: tf.Tensor):
  """Squared norms of the kernel gradients a_m^T d_m, and their weighted sum.

  Args:
    a: layer-input patches [M, S, K] of each microbatch m.
    d: loss gradients at the layer's outputs [M, S, O].

  Returns:
    (||a_m^T d_m||_F^2 [M], weights [M] -> sum_m w_m a_m^T d_m [K, O]),
    by the ghost norm sum((a a^T) * (d d^T)) and one matmul over all
    positions for the sum, or by forming the per-microbatch gradients and
    reusing them for the sum, as ghost_norm_is_cheaper picks from the static
    shapes. Both form the transposes, d^T a: TF's CPU matmuls are faster
    with the long K dimension innermost. Both return float32: in bfloat16
    (--compute_dtype) the ghost norm and its sum run on a and d cast to
    float32 (exactly), and formed gradients are multiplied in bfloat16, then
    cast, so that their norms and their sum are taken of the same float32
    values.
  """
  s, k, o = a.shape[1], a.shape[2], d.shape[2]
  if s is not None and ghost_norm_is_cheaper(s, k, o):
    a, d = tf.cast(a, tf.float32), tf.cast(d, tf.float32)
    squares = tf.reduce_sum(tf.matmul(a, a, transpose_b=True) *
                            tf.matmul(d, d, transpose_b=True), [1, 2])
    return squares, lambda w: tf.transpose(tf.matmul(
        tf.reshape(d * w[:, tf.newaxis, tf.newaxis], [-1, o]),
        tf.reshape(a, [-1, k]), transpose_a=True))
  grads = tf.cast(tf.matmul(d, a, transpose_a=True), tf.float32)
  squares = tf.reduce_sum(tf.square(grads), [1, 2])
  return squares, lambda w: tf.transpose(tf.tensordot(w, grads, 1))


def clipped_sum_ghost(clip: tf.Tensor, loss_fn: LossFn, layers, variables,
                      records, microbatch_size: int):
  """Like clipped_sum_vectorized, by layer capture (see module doc).

  Args:
    clip: C, the clip norm.
    loss_fn: per-record losses, a function of the critic's outputs only.
    layers: capturable_layers(critic).
    variables: the critic's trainable variables, all owned by `layers`.
    records: nest of [B, ...] tensors, B a multiple of microbatch_size.
    microbatch_size: records per microbatch (k).

  Returns:
    (list of summed clipped gradients, per-microbatch norms [B/k]).
  """
  num_microbatches = _batch_size(records) // microbatch_size
  # Padded microbatches (an empty batch gets one) get weight 0.
  records, mask = pad_to_multiple(records, microbatch_size)
  with tf.GradientTape() as tape, _recording_calls(layers, tape) as calls:
    total_loss = tf.reduce_sum(loss_fn(records))
  outputs = [out for record in calls for _, out in record]
  deltas = iter(tape.gradient(total_loss, outputs,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO))

  def grouped(t):
    """[B, P, n] -> [B/k, k*P, n]: one microbatch's positions together."""
    return tf.reshape(t, [-1, microbatch_size * t.shape[1], t.shape[2]])

  # Per layer: a [M, S, K] and d [M, S, O], S = k x calls x positions; d is
  # divided by k since each microbatch's loss is its records' mean.
  weighted_sums, squares = [], []
  for layer, record in zip(layers, calls):
    if not record:
      continue
    patches = _PATCHES[type(layer)][1]
    a = grouped(patches(layer, [x for x, _ in record]))
    d = grouped(tf.concat([_positions(next(deltas))
                           for _ in record], 1)) / microbatch_size
    kernel_squares, kernel_sum = _kernel_gradients(a, d)
    squares.append(kernel_squares)
    weighted_sums.append((layer.kernel, kernel_sum))
    if layer.use_bias:
      bias_grads = tf.reduce_sum(tf.cast(d, tf.float32), 1)
      squares.append(tf.reduce_sum(tf.square(bias_grads), 1))
      weighted_sums.append(
          (layer.bias, lambda w, g=bias_grads: tf.tensordot(w, g, 1)))
  norms = tf.sqrt(tf.add_n(squares))
  weights = mask[::microbatch_size] * _clip_weights(norms, clip)

  sums = {v.ref(): tf.reshape(weighted_sum(weights), v.shape)
          for v, weighted_sum in weighted_sums}
  return ([sums.get(v.ref(), tf.zeros_like(v)) for v in variables],
          norms[:num_microbatches])


def _choose_engine(engine: str, critic: keras.Model,
                   loss_differentiates_inputs: bool):
  """(engine to run, capturable layers): ghost falls back to vectorized."""
  if engine != 'ghost':
    return engine, None
  if loss_differentiates_inputs:
    logging.info('--grad_engine=ghost: the loss differentiates the critic '
                 'w.r.t. its inputs (gradient penalty); using vectorized.')
    return 'vectorized', None
  layers = capturable_layers(critic)
  if layers is None:
    logging.warning('--grad_engine=ghost: the critic has variables outside '
                    'linear Dense/Conv2D layers; using vectorized.')
    return 'vectorized', None
  return engine, layers


def clipped_sums(engine: str, clip: tf.Tensor, loss_fn: LossFn,
                 model: keras.Model, records, microbatch_size: int,
                 chunk_size: int = 128, loss_differentiates_inputs=False):
  """Sums of the clipped per-microbatch gradients over every replica's
  records, and this replica's unclipped microbatch norms (a non-private
  diagnostic), by the ghost or vectorized engine.

  `loss_differentiates_inputs` (a gradient penalty) makes the ghost engine
  fall back to vectorized (see module doc).
  """
  if engine not in ('ghost', 'vectorized'):
    raise ValueError(f'--grad_engine={engine!r}: per-record clipping outside '
                     'the DP optimizer takes ghost or vectorized.')
  engine, layers = _choose_engine(engine, model, loss_differentiates_inputs)
  variables = model.trainable_variables
  clip = clip_for(clip, model)
  if engine == 'ghost':
    sums, norms = clipped_sum_ghost(clip, loss_fn, layers, variables, records,
                                    microbatch_size)
  else:
    sums, norms = clipped_sum_vectorized(clip, loss_fn, variables, records,
                                         microbatch_size, chunk_size)
  # Each replica clipped its own examples; the caller noises the global sum
  # once (every replica draws the same noise from the same seed).
  ctx = tf.distribute.get_replica_context()
  if ctx is not None and ctx.num_replicas_in_sync > 1:
    sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM, sums)
  return sums, norms
