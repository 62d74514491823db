"""Trains a class-conditional DPGAN: a DP-SGD critic and a generator.

Example (offline, Debian, a few minutes on 2 CPU cores):

  python train.py --dataset=fashion_mnist \
    --manual_dir=/usr/share/datasets/fashion-mnist \
    --model_dir=/tmp/m --export_dir=/tmp/e --target_epsilon=10 --delta=1e-5 \
    --epochs=1 --max_train_examples=2000

Rerunning the same command resumes from the last checkpoint in --model_dir.
A resume replays the noise of the steps after that checkpoint, so it refuses
every flag that changes what a critic step computes, naming it; the free ones
are config.RESUME_FREE_FLAGS (paths, cadences, how far to train, what is
exported). Presets: --flagfile=configs/<dataset>_eps<epsilon>.flags (flags
given after it override it).
"""

import sys

from absl import app
from absl import flags
from absl import logging

from dpgan_tf import callbacks
from dpgan_tf import cluster
from dpgan_tf import config as config_lib
from dpgan_tf import data as data_lib
from dpgan_tf import training

_DEFAULTS = config_lib.TrainConfig()

flags.DEFINE_string('dataset', _DEFAULTS.dataset, 'One of '
                    f'{", ".join(sorted(data_lib.DATASETS))}; folder:DIR '
                    '(a subfolder of PNG/JPEG images per class); or '
                    'tfds:NAME[:LABEL_KEY] (a tfds image classification '
                    'dataset). See docs/datasets.md.')
flags.DEFINE_string('data_dir', None, 'tfds data directory.')
flags.DEFINE_string('manual_dir', None, 'The dataset\'s official files for '
                    'offline preparation (nothing is ever downloaded; the '
                    'error without them names the files).')
flags.DEFINE_integer('image_size', None, 'Side of the square images trained '
                     'on (default: the dataset\'s own; 32 for folder: and '
                     'tfds: images of other sizes). Others are centre-'
                     'cropped and resized; 28, 32, 64, 96, 128, ... (halving at '
                     'least twice down to 6-12 pixels).')
flags.DEFINE_integer('image_channels', None, 'Convert every image to 1 or '
                     '3 channels (default: the dataset\'s own).')
flags.DEFINE_enum('celeb_a_attribute', _DEFAULTS.celeb_a_attribute,
                  config_lib.CELEB_A_ATTRIBUTES, 'The CelebA attribute '
                  'taken as the class (celeb_a datasets only).')
flags.DEFINE_string('model_dir', None, 'Checkpoints, TensorBoard logs; '
                    'rerunning with the same directory resumes.')
flags.DEFINE_string('export_dir', None, 'Where to export the generator as a '
                    'versioned TF Serving SavedModel.')
flags.DEFINE_integer('max_train_examples', None, 'Keep only the first K '
                     'training examples (N is then K in the accounting).')

flags.DEFINE_float('target_epsilon', None, 'Privacy budget: sigma is '
                   'calibrated to it, and training never exceeds it.')
flags.DEFINE_float('noise_multiplier', None, 'Fix sigma instead of '
                   'calibrating it (epsilon is reported).')
flags.DEFINE_float('delta', _DEFAULTS.delta, 'delta; must be below 1/N.')
flags.DEFINE_float('l2_norm_clip', _DEFAULTS.l2_norm_clip,
                   'Per-example gradient clip norm C.')
flags.DEFINE_integer('batch_size', _DEFAULTS.batch_size, 'Expected batch '
                     'size (Poisson: q = batch_size / N).')
flags.DEFINE_integer('num_microbatches', None, 'Microbatches per batch '
                     '(default: one example each, the privacy optimum).')
flags.DEFINE_enum('sampling', _DEFAULTS.sampling, config_lib.SAMPLING_METHODS,
                  'poisson (what the accountant assumes) or shuffle (the '
                  'common fixed-size approximation).')
flags.DEFINE_enum('grad_engine', _DEFAULTS.grad_engine,
                  config_lib.GRAD_ENGINES, 'How per-example gradients are '
                  'computed; same privacy either way.')
flags.DEFINE_integer('chunk_size', _DEFAULTS.chunk_size, 'Microbatches per '
                     'vectorised pass (vectorized engine; bounds memory).')

flags.DEFINE_float('epochs', _DEFAULTS.epochs, 'Passes over the training '
                   'data (in expectation) by the critic.')
flags.DEFINE_integer('n_critic', _DEFAULTS.n_critic,
                     'Critic updates (privacy steps) per generator step.')
flags.DEFINE_integer('n_generator', _DEFAULTS.n_generator,
                     'Generator updates per generator step, after its critic '
                     'updates. They read no real data: no privacy cost, '
                     'only compute.')
flags.DEFINE_enum('loss', _DEFAULTS.loss, config_lib.CRITIC_LOSSES,
                  'Critic loss.')
flags.DEFINE_enum('fake_gradient', _DEFAULTS.fake_gradient,
                  config_lib.FAKE_GRADIENTS, 'The critic loss\'s term on '
                  'fakes: '
                  '"paired", each fake in one clipped, noised record with a '
                  'real example of its class (DPGAN); or "public", fakes of '
                  'uniformly drawn classes apart, clipped at the same '
                  '--l2_norm_clip but not noised (they read no private data: '
                  'same guarantee, and the real term gets the whole clip '
                  'norm). Not with --loss=wgan_gp.')
flags.DEFINE_float('gp_weight', _DEFAULTS.gp_weight, 'wgan_gp penalty weight.')
flags.DEFINE_float('critic_weight_clip', _DEFAULTS.critic_weight_clip,
                   'Clip critic weights to [-c, c] (wasserstein).')
flags.DEFINE_integer('latent_dim', _DEFAULTS.latent_dim, 'Noise dimension.')
flags.DEFINE_integer('generator_width', _DEFAULTS.generator_width,
                     'Generator base filters.')
flags.DEFINE_enum('generator_upsampling', _DEFAULTS.generator_upsampling,
                  config_lib.UPSAMPLINGS, 'How the generator doubles its '
                  'resolution: "transposed" (stride-2 transposed '
                  'convolutions, DCGAN) or "resize" (nearest-neighbour '
                  'resize, then a 3x3 convolution: no checkerboard '
                  'artefacts). Generator only: no privacy cost.')
flags.DEFINE_integer('critic_width', _DEFAULTS.critic_width,
                     'Critic base filters.')
flags.DEFINE_enum('critic_norm', _DEFAULTS.critic_norm, config_lib.CRITIC_NORMS,
                  'How the critic normalises its convolutions: "none" or '
                  '"layer" (per-example layer norm without gain or bias: '
                  'clipping stays per example, no parameters added).')
flags.DEFINE_enum('compute_dtype', _DEFAULTS.compute_dtype,
                  config_lib.COMPUTE_DTYPES, 'Arithmetic of the networks\' '
                  'layers: "bfloat16" (Keras\'s mixed_bfloat16 policy) is '
                  'faster on CPUs with BF16 instructions; variables, '
                  'per-example norms, clipping and noise stay float32, and '
                  'the clip bound covers bfloat16 rounding. "auto": '
                  'bfloat16 on a GPU or a CPU with BF16 instructions, '
                  'float32 elsewhere (the run records which). Needs '
                  '--grad_engine=ghost or vectorized unless float32.')
flags.DEFINE_float('generator_lr', _DEFAULTS.generator_lr, 'Adam lr.')
flags.DEFINE_float('critic_lr', _DEFAULTS.critic_lr, 'DP Adam lr.')
flags.DEFINE_float('beta_1', _DEFAULTS.beta_1, 'Adam beta_1.')
flags.DEFINE_float('beta_2', _DEFAULTS.beta_2, 'Adam beta_2.')
flags.DEFINE_float('critic_beta_1', _DEFAULTS.critic_beta_1, 'Adam beta_1 of '
                   'the critic alone (default: --beta_1). Its DP noise is '
                   'independent across steps, so more momentum averages more '
                   'of it away, but the critic then lags behind the '
                   'generator.')
flags.DEFINE_float('generator_ema', _DEFAULTS.generator_ema, 'Decay of an '
                   'exponential moving average of the generator weights, '
                   'which is what is sampled and exported (post-processing: '
                   'no privacy cost). 0 exports the last iterate.')
flags.DEFINE_integer('sample_candidates', _DEFAULTS.sample_candidates,
                     "The export's generate signature draws this many "
                     'candidates per image and returns the one the critic '
                     'scores highest for its label (post-processing of the '
                     'private critic: no privacy cost; the critic is then '
                     'exported too). 1: plain samples. Changing it on a '
                     'finished run re-exports without training.')
flags.DEFINE_enum('warm_start', _DEFAULTS.warm_start,
                  config_lib.WARM_STARTS, 'A private warm start before '
                  'DP-SGD: "mean_embedding" releases the class-wise sums of '
                  'random Fourier features of the training set once (Gaussian '
                  'mechanism, L2 sensitivity 1, composed with the critic '
                  'steps in epsilon) and pre-trains the generator to match '
                  'their class means (DP-MERF). Needs --target_epsilon.')
flags.DEFINE_float('warm_start_epsilon_share',
                   _DEFAULTS.warm_start_epsilon_share, 'The share of '
                   '--target_epsilon that the warm start\'s release alone '
                   'may spend; the critic\'s sigma is then '
                   'calibrated so that the composition meets the target. 1: '
                   'the release takes the whole budget, there is no DP-SGD '
                   'phase, and the pre-trained generator is exported.')
flags.DEFINE_integer('warm_start_steps', _DEFAULTS.warm_start_steps,
                     'Generator pre-training updates on the release (no '
                     'privacy cost, only compute).')
flags.DEFINE_integer('warm_start_features', _DEFAULTS.warm_start_features,
                     'Random Fourier frequencies D of the release (2D '
                     'features per class, and a count).')
flags.DEFINE_float('warm_start_length_scale',
                   _DEFAULTS.warm_start_length_scale, 'Length scale of the '
                   'Gaussian kernel the features approximate, on [0, 1] '
                   'pixels.')
flags.DEFINE_float('warm_start_lr', _DEFAULTS.warm_start_lr,
                   'Adam learning rate of the pre-training.')
flags.DEFINE_integer('seed', None, 'Seed for initialisation, sampling and '
                     'noise. Keep it secret: the guarantee relies on the '
                     'noise being unpredictable. Default: drawn from the OS '
                     'and kept in the checkpoint.')

flags.DEFINE_integer('checkpoint_every', _DEFAULTS.checkpoint_every,
                     'Generator steps between checkpoints.')
flags.DEFINE_integer('sample_every', _DEFAULTS.sample_every,
                     'Generator steps between TensorBoard sample grids.')
flags.DEFINE_integer('log_every', _DEFAULTS.log_every,
                     'Generator steps between progress lines.')
flags.DEFINE_integer('keep_checkpoints', _DEFAULTS.keep_checkpoints,
                     'Checkpoints to keep.')
flags.DEFINE_bool('nonprivate_diagnostics', False, 'Also log statistics of '
                  'the real batches (critic loss on real data, Wasserstein '
                  'estimate, clipping) under nonprivate/: NOT covered by the '
                  'guarantee.')
flags.DEFINE_string('profile_steps', _DEFAULTS.profile_steps, '"START,STOP": '
                    'trace generator steps START to STOP with TensorFlow\'s '
                    'profiler into <model_dir>/nonprivate/profile (TensorBoard\'s '
                    'Profile tab): NOT covered by the guarantee.')
flags.DEFINE_enum('strategy', _DEFAULTS.strategy, config_lib.STRATEGIES,
                  'tf.distribute strategy (multi_worker reads TF_CONFIG).')
flags.DEFINE_integer('cluster_timeout', _DEFAULTS.cluster_timeout,
                     'Seconds a multi_worker run waits for every worker of '
                     'TF_CONFIG to start.')

FLAGS = flags.FLAGS


def config_from_flags() -> config_lib.TrainConfig:
  """The parsed flags (a --flagfile preset included) as a TrainConfig."""
  return config_lib.TrainConfig(
      **{f: FLAGS[f].value for f in config_lib.TrainConfig.__dataclass_fields__})


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = config_from_flags()
  logging.set_verbosity(logging.INFO)
  try:
    result = training.train(config)
  except ValueError as e:  # Bad input: a clear message, nothing harmed.
    print(f'train.py: error: {e}', file=sys.stderr)
    sys.exit(2)
  except callbacks.TrainingDiverged as e:
    print(f'train.py: training diverged: {e}', file=sys.stderr)
    sys.exit(3)
  except cluster.WorkerLost as e:
    print(f'train.py: stopped: {e}', file=sys.stderr)
    sys.exit(4)
  print(result.message)
  updates = (f', {config.n_generator} generator updates each'
             if config.n_generator > 1 else '')
  print(f'Final epsilon: {result.epsilon:.4f} (delta={config.delta:g}) after '
        f'{result.critic_steps} critic steps '
        f'({result.generator_steps} generator steps{updates}).')
  print(f'Guarantee: {result.guarantee}')
  if result.export_path:
    print(f'Exported generator: {result.export_path}')


if __name__ == '__main__':
  app.run(main)
