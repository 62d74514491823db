"""Exports the generator as a run's warm start left it, for eval.py.

A run with --warm_start keeps the checkpoint warm_start-<--warm_start_steps>
(and every --checkpoint_every steps before it, if --keep_checkpoints has not
rotated them out): the pre-trained generator
before any critic step, with a ledger whose epsilon is the release's alone.
Its eval.py report against the run's final export's measures what the
DP-GAN phase adds to the warm start (docs/warm_start.md). Samples are plain
(one candidate each): the warm start has no critic to choose among them.

  python benchmarks/warm_start_alone.py --model_dir=RUN/model \
    --export_dir=RUN/warm_start_export
  python eval.py --export_dir=RUN/warm_start_export --model_dir=RUN/model ...
"""

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=g-import-not-at-top,g-bad-import-order
from absl import app
from absl import flags
import tensorflow as tf

from dpgan_tf import config as config_lib
from dpgan_tf import data as data_lib
from dpgan_tf import export as export_lib
from dpgan_tf import networks
from dpgan_tf import privacy
from dpgan_tf import training
from dpgan_tf import warm_start
# pylint: enable=g-import-not-at-top,g-bad-import-order

flags.DEFINE_string('model_dir', None, 'The run (with --warm_start).')
flags.DEFINE_string('export_dir', None, 'Where to export the generator.')
flags.DEFINE_integer('step', None, 'The pre-training step to export (a kept '
                     'warm_start-<step> checkpoint); default: the last.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  c = config_lib.TrainConfig(**config_lib.read_run_config(FLAGS.model_dir))
  c = dataclasses.replace(c, sample_candidates=1)
  spec = data_lib.get_spec(c.dataset)
  generator = networks.build_generator(spec.image_shape, spec.num_classes,
                                       c.latent_dim, c.generator_width,
                                       c.generator_upsampling)
  ledger = privacy.PrivacyLedger(warm_start_noise_multiplier=0.0)
  step = c.warm_start_steps if FLAGS.step is None else FLAGS.step
  path = os.path.join(FLAGS.model_dir, f'{warm_start.CHECKPOINT_NAME}-{step}')
  tf.train.Checkpoint(generator=generator, ledger=ledger).restore(
      path).expect_partial().assert_existing_objects_matched()
  d = ledger.as_dict()
  assert d['critic_steps'] == 0 and d['warm_start_releases'] == 1, d
  version = export_lib.export_generator(
      generator, FLAGS.export_dir, c.latent_dim,
      training.export_metadata(c, ledger, spec))
  print(f'{path}: epsilon {ledger.epsilon():.4f} (the release alone), '
        f'exported to {version}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['model_dir', 'export_dir'])
  app.run(main)
