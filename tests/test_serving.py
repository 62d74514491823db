"""The export as TF Serving and TensorFlow's own tools see it.

saved_model_cli shows and runs the signatures; the REST request bodies in
docs/serving_requests/ (the files docs/serving.md shows) are converted to
tensors as TF Serving converts JSON and answered by the SavedModel, loaded in a
fresh process that never imports this project; the export's files are
checked for anything but the generator.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from conftest import FASHION_MNIST_DIR
from conftest import REPO_ROOT
from dpgan_tf import config as config_lib
from dpgan_tf import export as export_lib
from dpgan_tf import networks
from dpgan_tf import training

REQUESTS_DIR = os.path.join(REPO_ROOT, 'docs', 'serving_requests')
REQUESTS = ('serving_default.instances.json', 'serving_default.inputs.json',
            'generate.inputs.json')
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable),
                               'saved_model_cli')
CLIENT = os.path.join(REPO_ROOT, 'tests', 'helpers', 'serving_client.py')
LATENT_DIM = 64  # The request bodies' noise width: the default latent_dim.
GENERATOR_WIDTH = 8
IMAGE_SHAPE = [28, 28, 1]


@pytest.fixture(scope='module')
def version_dir(tmp_path_factory, tfds_dir):
  """An export from one generator step of a real training run."""
  tmp = tmp_path_factory.mktemp('serving')
  result = training.train(config_lib.TrainConfig(
      dataset='fashion_mnist', manual_dir=FASHION_MNIST_DIR, data_dir=tfds_dir,
      model_dir=str(tmp / 'model'), export_dir=str(tmp / 'export'),
      max_train_examples=256, batch_size=32, epochs=1 / 8,
      noise_multiplier=1.0, seed=5, latent_dim=LATENT_DIM,
      generator_width=GENERATOR_WIDTH, critic_width=8))
  return result.export_path


def _read(path):
  with open(path) as f:
    return json.load(f)


def _rows(columnar: dict) -> dict:
  """The row-format twin of a columnar body: one instance per label."""
  inputs = columnar['inputs']
  return {'signature_name': columnar['signature_name'],
          'instances': [{'labels': label, 'seed': inputs['seed']}
                        for label in inputs['labels']]}


@pytest.fixture(scope='module')
def outside(version_dir, tmp_path_factory):
  """Runs every outside tool at once (they are independent processes)."""
  tmp = tmp_path_factory.mktemp('outside')
  rows = tmp / 'generate.instances.json'
  rows.write_text(json.dumps(_rows(_read(os.path.join(
      REQUESTS_DIR, 'generate.inputs.json')))))
  requests = [os.path.join(REQUESTS_DIR, r) for r in REQUESTS]
  # generate twice: the same seed must give the same images.
  requests += [requests[-1], str(rows)]
  noise = '[' + ', '.join(['[' + ', '.join(['0.5'] * LATENT_DIM) + ']'] * 3)
  commands = {
      'show': [SAVED_MODEL_CLI, 'show', '--dir', version_dir, '--all'],
      'serving_default': [
          SAVED_MODEL_CLI, 'run', '--dir', version_dir, '--tag_set', 'serve',
          '--signature_def', 'serving_default', '--input_exprs',
          f'noise={noise}];labels=[0, 4, 9]', '--outdir',
          str(tmp / 'serving_default')],
      'generate': [
          SAVED_MODEL_CLI, 'run', '--dir', version_dir, '--tag_set', 'serve',
          '--signature_def', 'generate', '--input_exprs',
          'labels=[1, 2];seed=7', '--outdir', str(tmp / 'generate')],
      'client': [sys.executable, CLIENT, version_dir, *requests],
  }
  processes = {k: subprocess.Popen(c, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
               for k, c in commands.items()}
  outputs = {}
  for name, process in processes.items():
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, f'{commands[name]}:\n{stderr[-3000:]}'
    outputs[name] = stdout
  outputs['run_dir'] = tmp
  return outputs


def _signature_defs(show_output: str) -> dict:
  """saved_model_cli show --all -> {signature: {'inputs'/'outputs': ...}}."""
  defs = {}
  for block in show_output.split("signature_def['")[1:]:
    name = block[:block.index("'")]
    entries = re.findall(r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+"
                         r'dtype: (\w+)\s+shape: (\(.*?\))', block)
    method = re.search(r'Method name is: (\S*)', block)
    defs[name] = {'method': method.group(1) if method else ''}
    for kind, key, dtype, shape in entries:
      defs[name].setdefault(kind, {})[key] = (dtype, shape)
  return defs


def test_cli_shows_the_documented_signatures(outside):
  defs = _signature_defs(outside['show'])
  images = {'images': ('DT_FLOAT', '(-1, 28, 28, 1)')}
  assert defs['serving_default'] == {
      'method': 'tensorflow/serving/predict',
      'inputs': {'noise': ('DT_FLOAT', f'(-1, {LATENT_DIM})'),
                 'labels': ('DT_INT32', '(-1)')},
      'outputs': images}
  assert defs['generate'] == {
      'method': 'tensorflow/serving/predict',
      'inputs': {'labels': ('DT_INT32', '(-1)'), 'seed': ('DT_INT64', '()')},
      'outputs': images}


@pytest.mark.parametrize('signature,batch', [('serving_default', 3),
                                             ('generate', 2)])
def test_cli_run_returns_images(outside, signature, batch):
  images = np.load(outside['run_dir'] / signature / 'images.npy')
  assert images.shape == (batch, *IMAGE_SHAPE)
  assert images.dtype == np.float32
  assert 0.0 <= images.min() <= images.max() <= 1.0


@pytest.fixture(scope='module')
def answers(outside):
  return json.loads(outside['client'])


def _images(answer, key):
  return np.asarray(answer['response'][key], np.float32)


def test_rest_bodies_for_serving_default(answers):
  rows = _images(answers[0], 'predictions')
  columns = _images(answers[1], 'outputs')
  assert rows.shape == columns.shape == (2, *IMAGE_SHAPE)
  assert 0.0 <= rows.min() <= rows.max() <= 1.0
  np.testing.assert_array_equal(rows, columns)


def test_rest_body_for_generate(answers):
  images = _images(answers[2], 'outputs')
  assert images.shape == (10, *IMAGE_SHAPE)
  assert 0.0 <= images.min() <= images.max() <= 1.0
  np.testing.assert_array_equal(images, _images(answers[3], 'outputs'))


def test_generate_needs_the_columnar_format(answers):
  # Row format batches every input, so the scalar seed arrives as a vector of
  # ten seeds, which the signature (seed: int64 scalar) rejects.
  assert set(answers[4]) == {'error'}
  assert 'Shapes of all inputs must match' in answers[4]['error']


def test_export_holds_the_generator_and_nothing_else(version_dir):
  assert set(os.listdir(version_dir)) <= {'saved_model.pb', 'fingerprint.pb',
                                          'variables', 'assets'}
  assert os.listdir(os.path.join(version_dir, 'assets')) == [
      export_lib.METADATA_FILE]
  saved = tf.train.list_variables(
      os.path.join(version_dir, 'variables', 'variables'))
  values = [(n, s) for n, s in saved
            if n.endswith('/.ATTRIBUTES/VARIABLE_VALUE')]
  assert all(n.startswith('generator/') for n, _ in values), values
  assert not [n for n, _ in saved if 'OPTIMIZER_SLOT' in n]
  generator = networks.build_generator(IMAGE_SHAPE, 10, LATENT_DIM,
                                       GENERATOR_WIDTH)
  assert sorted(s for _, s in values) == sorted(
      w.shape.as_list() for w in generator.weights)


def test_generate_returns_the_critics_best_of_the_candidates(tmp_path):
  """sample_candidates=M: image i of `generate` is, of candidates
  [i*M, (i+1)*M) drawn from the seed's noise, the one the exported critic
  scores highest for label i; the critic's weights travel with it."""
  tf.keras.utils.set_random_seed(3)
  generator = networks.build_generator(IMAGE_SHAPE, 10, 8, width=8)
  critic = networks.build_critic(IMAGE_SHAPE, 10, width=8)
  path = export_lib.export_generator(generator, str(tmp_path), 8, {},
                                     critic=critic, sample_candidates=4)
  labels = tf.constant([0, 3, 7, 9, 3])
  got = tf.saved_model.load(path).signatures['generate'](
      labels=labels, seed=tf.constant(11, tf.int64))['images'].numpy()

  noise = tf.random.stateless_normal([20, 8], [11, 0])
  candidate_labels = np.repeat(labels.numpy(), 4)
  candidates = generator([noise, candidate_labels]).numpy()
  scores = critic([candidates, candidate_labels]).numpy().reshape(5, 4)
  best = scores.argmax(axis=1)
  assert len(set(best)) > 1  # Not always the first candidate.
  expected = (candidates.reshape(5, 4, *IMAGE_SHAPE)[np.arange(5), best]
              + 1) / 2
  np.testing.assert_allclose(got, expected, atol=1e-5)
  names = [n for n, _ in tf.train.list_variables(
      os.path.join(path, 'variables', 'variables'))
           if n.endswith('/.ATTRIBUTES/VARIABLE_VALUE')]
  assert {n.split('/')[0] for n in names} == {'generator', 'critic'}


def test_candidates_without_a_critic_are_refused(tmp_path):
  generator = networks.build_generator(IMAGE_SHAPE, 10, 8, width=8)
  with pytest.raises(ValueError, match='sample_candidates=3 needs the critic'):
    export_lib.export_generator(generator, str(tmp_path), 8, {},
                                sample_candidates=3)
  assert export_lib.list_versions(str(tmp_path)) == []


def test_export_embeds_no_data(version_dir):
  """No constant in any graph could hold training images (uint8 or large)."""
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(version_dir, 'saved_model.pb'), 'rb') as f:
    proto.ParseFromString(f.read())
  graph = proto.meta_graphs[0].graph_def
  nodes = list(graph.node) + [n for fn in graph.library.function
                              for n in fn.node_def]
  for node in nodes:
    if node.op == 'Const':
      tensor = node.attr['value'].tensor
      assert tensor.dtype != tf.uint8.as_datatype_enum, node.name
      assert len(tensor.tensor_content) <= 4096, node.name


# Run in a fresh process, on a copy of the package that it edits after import.
_EXPORT_AFTER_EDIT = '''
import pathlib
import sys

import numpy as np
import tensorflow as tf

from dpgan_tf import data
from dpgan_tf import export
from dpgan_tf import networks

tf.keras.utils.set_random_seed(0)
generator = networks.build_generator((28, 28, 1), 10, 8, width=8)
# The edit: to_unit_range's first line now starts to_model_range.
source = pathlib.Path(data.__file__)
shift = (data.to_unit_range.__code__.co_firstlineno -
         data.to_model_range.__code__.co_firstlineno)
source.write_text('#\\n' * shift + source.read_text())
path = export.export_generator(generator, sys.argv[1], 8, {})
noise, labels = tf.random.normal([4, 8]), tf.range(4)
served = tf.saved_model.load(path).signatures['serving_default'](
    noise=noise, labels=labels)['images']
np.testing.assert_allclose(
    served, data.to_unit_range(generator([noise, labels])), atol=1e-6)
'''


def test_export_computes_the_code_the_run_imported(tmp_path):
  """train.py exports at the end of a run, hours after it imported dpgan_tf;
  editing or upgrading the package meanwhile must not change the export.
  Autograph would re-read each function's source from disk by line number
  when tracing: a 40-epoch run whose data.py was edited exported
  to_model_range in place of to_unit_range (black images)."""
  shutil.copytree(os.path.join(REPO_ROOT, 'dpgan_tf'), tmp_path / 'dpgan_tf')
  script = tmp_path / 'export_after_edit.py'
  script.write_text(_EXPORT_AFTER_EDIT)
  result = subprocess.run([sys.executable, str(script),
                           str(tmp_path / 'export')], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
