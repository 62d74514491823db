"""Answers TF Serving REST `:predict` bodies from a SavedModel, as TF Serving.

Usage: python tests/helpers/serving_client.py VERSION_DIR REQUEST.json [...]
Prints one JSON list: per request, {"response": ...} or {"error": ...}.

Imports TensorFlow only, never this project: an export must stand alone. The
JSON-to-tensor conversion follows TF Serving's FillPredictRequestFromJson
(tensorflow_serving/util/json_tensor.cc):
* "signature_name" selects the signature (default: serving_default);
* row format, "instances": a list of objects holding every input; each input
  is stacked along a new first dimension, so every input, a scalar one too,
  arrives with a batch dimension;
* columnar format, "inputs": an object of input -> value, each value taken
  as it is (its nesting is its shape);
* an integer input needs JSON integers; any JSON number fills a float.
The response holds "predictions" (row request; a list over the batch) or
"outputs" (columnar), with output names dropped when there is only one.
"""

import json
import sys

import numpy as np
import tensorflow as tf


def to_array(value, spec: tf.TensorSpec) -> np.ndarray:
  array = np.asarray(value)
  allowed = 'iu' if spec.dtype.is_integer else 'iuf'
  if array.dtype.kind not in allowed:
    raise TypeError(f'JSON value {value!r} is not of expected type '
                    f'{spec.dtype.name}')
  return array.astype(spec.dtype.as_numpy_dtype)


def to_tensors(body: dict, specs: dict) -> dict:
  if 'instances' in body:
    instances = body['instances']
    for i, instance in enumerate(instances):
      if set(instance) != set(specs):
        raise ValueError(f"element {i} of 'instances': keys must be equal to "
                         f'{sorted(specs)}')
    return {name: np.stack([to_array(x[name], spec) for x in instances])
            for name, spec in specs.items()}
  return {name: to_array(body['inputs'][name], spec)
          for name, spec in specs.items()}


def predict(model, body: dict) -> dict:
  signature = model.signatures[body.get('signature_name', 'serving_default')]
  specs = signature.structured_input_signature[1]
  outputs = {k: v.numpy().tolist() for k, v in signature(**{
      k: tf.constant(v) for k, v in to_tensors(body, specs).items()}).items()}
  if len(outputs) == 1:
    outputs = next(iter(outputs.values()))
  if 'instances' in body:
    if isinstance(outputs, dict):
      outputs = [dict(zip(outputs, row)) for row in zip(*outputs.values())]
    return {'predictions': outputs}
  return {'outputs': outputs}


def main():
  model = tf.saved_model.load(sys.argv[1])
  answers = []
  for path in sys.argv[2:]:
    with open(path) as f:
      body = json.load(f)
    try:
      answers.append({'response': predict(model, body)})
    except (TypeError, ValueError, tf.errors.InvalidArgumentError) as e:
      answers.append({'error': f'{type(e).__name__}: {e}'})
  print(json.dumps(answers))


if __name__ == '__main__':
  main()
