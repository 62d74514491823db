"""Private critic gradients: clip each microbatch, sum, add noise once, average.

Two engines compute the same mechanism:

* `jacobian`: the DP optimizer's own path (`DPKerasAdamOptimizer`
  `_compute_gradients`), a `tape.jacobian` over the microbatch losses. Its
  cost grows with batch size x microbatches (about 90x a plain step at batch
  64 with one example per microbatch on a 2-core CPU).
* `vectorized` (default): one forward and backward pass per microbatch,
  vectorised by `tf.vectorized_map` into batched kernels. The critic never
  mixes examples, so these passes are exactly the per-microbatch gradients.
  They are then clipped to the optimizer's Gaussian query's clip norm by the
  query's own rule (clip by global norm per record; computed batched, since
  `tf.clip_by_global_norm` has no vectorised form), summed, and noised by
  that query's `get_noised_result`: the same clipping and noise as the
  jacobian path.

Both divide the noised sum by the *expected* number of microbatches, a
constant: dividing by the realised Poisson batch size would make the
normaliser data-dependent. The vectorized engine pads each batch to whole
chunks of fixed size (so the traced graph has fixed shapes and bounded
memory); padded rows are masked out of the sum and never counted.
"""

from typing import Callable, List, Sequence

import tensorflow as tf

GRAD_ENGINES = ('vectorized', 'jacobian')

# loss_fn(records) -> per-record losses [B]; records is a nest of tensors
# with a leading batch dimension.
LossFn = Callable[[object], tf.Tensor]


def _batch_size(records) -> tf.Tensor:
  return tf.shape(tf.nest.flatten(records)[0])[0]


def _group(records, microbatch_size: int):
  """[B, ...] -> [B / k, k, ...]."""
  return tf.nest.map_structure(
      lambda t: tf.reshape(t, tf.concat([[-1, microbatch_size],
                                         tf.shape(t)[1:]], 0)), records)


def _pad_to_multiple(records, multiple: int):
  """Zero-pads the leading dim up to a multiple; returns (padded, mask)."""
  n = _batch_size(records)
  padded_n = (n + multiple - 1) // multiple * multiple
  padding = padded_n - n

  def pad(t):
    paddings = tf.concat([[[0, padding]],
                          tf.zeros([tf.rank(t) - 1, 2], tf.int32)], 0)
    return tf.pad(t, paddings)

  mask = tf.concat([tf.ones([n]), tf.zeros([padding])], 0)
  return tf.nest.map_structure(pad, records), mask


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


def clipped_sum_vectorized(optimizer, loss_fn: LossFn,
                           variables: Sequence[tf.Variable], records,
                           microbatch_size: int, chunk_size: int):
  """Sum over microbatches of clipped gradients, and the unclipped norms.

  Args:
    optimizer: the DP optimizer whose Gaussian query clips.
    loss_fn: per-record losses.
    variables: the critic's trainable variables.
    records: nest of [B, ...] tensors, B a multiple of microbatch_size.
    microbatch_size: records per microbatch (k).
    chunk_size: microbatches per vectorised pass; B/k is padded up to a
      multiple of it and padded microbatches are masked out.

  Returns:
    (list of summed clipped gradients, per-microbatch norms [B/k]).
  """
  query = optimizer._dp_sum_query  # pylint: disable=protected-access
  clip = tf.cast(query.derive_sample_params(optimizer._global_state),  # pylint: disable=protected-access
                 tf.float32)
  grouped = _group(records, microbatch_size)
  num_microbatches = _batch_size(grouped)
  padded, mask = _pad_to_multiple(grouped, chunk_size)
  num_chunks = _batch_size(padded) // chunk_size
  chunked = tf.nest.map_structure(
      lambda t: tf.reshape(t, tf.concat([[num_chunks, chunk_size],
                                         tf.shape(t)[1:]], 0)), padded)
  chunked_mask = tf.reshape(mask, [num_chunks, chunk_size])

  def body(i, sums, norms):
    chunk = tf.nest.map_structure(lambda t: t[i], chunked)
    grads = per_microbatch_gradients(loss_fn, variables, chunk)
    chunk_norms = per_microbatch_norms(grads)
    # The query's rule, tf.clip_by_global_norm per record, computed batched:
    # scale = C / max(norm, C). Padded records get weight 0.
    weights = chunked_mask[i] * clip / tf.maximum(chunk_norms, clip)
    sums = [s + tf.tensordot(weights, g, axes=1) for s, g in zip(sums, grads)]
    return i + 1, sums, norms.write(i, chunk_norms)

  sums = [tf.zeros_like(v) for v in variables]
  norms = tf.TensorArray(tf.float32, size=num_chunks)
  _, sums, norms = tf.while_loop(lambda i, *_: i < num_chunks, body,
                                 (tf.constant(0), sums, norms))
  return sums, norms.concat()[:num_microbatches]


def dp_gradients(engine: str, optimizer, loss_fn: LossFn,
                 variables: Sequence[tf.Variable], records,
                 microbatch_size: int, expected_microbatches: float,
                 chunk_size: int = 128):
  """Noised average gradient of the critic, and per-microbatch norms.

  The norms are a non-private diagnostic (the fraction clipped); the
  jacobian engine does not expose them and returns an empty vector.
  """
  expected = tf.cast(expected_microbatches, tf.float32)
  if engine == 'vectorized':
    sums, norms = clipped_sum_vectorized(optimizer, loss_fn, variables,
                                         records, microbatch_size, chunk_size)
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
      # Each replica clipped its own examples; noise is added once, to the
      # global sum (every replica draws the same noise from the same seed).
      sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM, sums)
    # These gradients are clipped and noised by the optimizer's own query.
    optimizer._was_dp_gradients_called = True  # pylint: disable=protected-access
    noised, _, _ = optimizer._dp_sum_query.get_noised_result(  # pylint: disable=protected-access
        sums, optimizer._global_state)  # pylint: disable=protected-access
    return [g / expected for g in noised], norms
  if engine == 'jacobian':
    with tf.GradientTape() as tape:
      losses = loss_fn(records)
    grads_and_vars = optimizer._compute_gradients(  # pylint: disable=protected-access
        losses, list(variables), tape=tape)
    # The optimizer divides by the microbatches it was given; rescale to the
    # expected count so both engines apply the same update.
    used = tf.cast(_batch_size(records) // microbatch_size, tf.float32)
    return [g * used / expected for g, _ in grads_and_vars], tf.zeros([0])
  raise ValueError(f'--grad_engine={engine!r}: choose one of {GRAD_ENGINES}.')
