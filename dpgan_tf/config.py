"""Training configuration and the checks that need no data.

`train.py` turns flags into a TrainConfig; `validate()` rejects bad values
before anything is read or written, with a message naming the flag.
"""

import dataclasses
import json
import os
from typing import Optional

from dpgan_tf import files

# The choices of every option flag, here alone: the modules that implement
# them take their names from here.
STRATEGIES = ('default', 'mirrored', 'multi_worker')
SAMPLING_METHODS = ('poisson', 'shuffle')
GRAD_ENGINES = ('ghost', 'vectorized', 'jacobian')
CRITIC_LOSSES = ('wasserstein', 'hinge', 'wgan_gp')
FAKE_GRADIENTS = ('paired', 'public')
UPSAMPLINGS = ('transposed', 'resize')
CRITIC_NORMS = ('none', 'layer')
WARM_STARTS = ('none', 'mean_embedding')
# CelebA's 40 binary attributes; --celeb_a_attribute picks the class.
CELEB_A_ATTRIBUTES = (
    '5_o_Clock_Shadow', 'Arched_Eyebrows', 'Attractive', 'Bags_Under_Eyes',
    'Bald', 'Bangs', 'Big_Lips', 'Big_Nose', 'Black_Hair', 'Blond_Hair',
    'Blurry', 'Brown_Hair', 'Bushy_Eyebrows', 'Chubby', 'Double_Chin',
    'Eyeglasses', 'Goatee', 'Gray_Hair', 'Heavy_Makeup', 'High_Cheekbones',
    'Male', 'Mouth_Slightly_Open', 'Mustache', 'Narrow_Eyes', 'No_Beard',
    'Oval_Face', 'Pale_Skin', 'Pointy_Nose', 'Receding_Hairline',
    'Rosy_Cheeks', 'Sideburns', 'Smiling', 'Straight_Hair', 'Wavy_Hair',
    'Wearing_Earrings', 'Wearing_Hat', 'Wearing_Lipstick', 'Wearing_Necklace',
    'Wearing_Necktie', 'Young')
IMAGE_CHANNELS = (1, 3)
COMPUTE_DTYPES = ('float32', 'bfloat16', 'auto')
CHOICES = {
    'sampling': SAMPLING_METHODS, 'grad_engine': GRAD_ENGINES,
    'loss': CRITIC_LOSSES, 'fake_gradient': FAKE_GRADIENTS,
    'generator_upsampling': UPSAMPLINGS, 'critic_norm': CRITIC_NORMS,
    'strategy': STRATEGIES, 'warm_start': WARM_STARTS,
    'celeb_a_attribute': CELEB_A_ATTRIBUTES,
    'compute_dtype': COMPUTE_DTYPES,
}
# The flags as a run was started, in its --model_dir (the seed left out).
RUN_CONFIG_FILE = 'run_config.json'

# The one rule for resuming: these flags may change, every other field of
# TrainConfig is refused. Noise and batches are keyed by (seed, critic step),
# so a resume replays the steps after its last checkpoint with the noise
# they had; computed differently, two releases of one step with the same
# noise would cancel it. None of these changes what a critic step computes.
RESUME_FREE_FLAGS = frozenset({
    # Where the data, checkpoints and exports are.
    'model_dir', 'export_dir', 'data_dir', 'manual_dir',
    # How far to train: sigma comes from the checkpoint's ledger, and a
    # given --noise_multiplier is checked against it.
    'epochs', 'target_epsilon', 'noise_multiplier',
    # Cadence of checkpoints and reports, and opt-in extra metrics.
    'checkpoint_every', 'sample_every', 'log_every', 'keep_checkpoints',
    'nonprivate_diagnostics', 'profile_steps',
    # What is sampled and exported (the moving average reads the generator
    # only; switching it on or off is refused by its own check).
    'generator_ema', 'sample_candidates',
    # The checkpoint's seed is used.
    'seed',
    # How long workers wait for each other at start-up.
    'cluster_timeout',
})


def image_halvings(size: int) -> Optional[int]:
  """The stride-2 layers between an image of side `size` and the networks'
  base of 6 to 12 pixels (28 -> 7, 32 -> 8, 96 -> 12, 128 -> 8), or None if
  the side does not halve at least twice down there."""
  halvings = 0
  while size > 12 and size % 2 == 0:
    size //= 2
    halvings += 1
  return halvings if halvings >= 2 and 6 <= size <= 12 else None


def supported_image_size(size: int) -> bool:
  """The sides the networks build for (image_halvings): MNIST's 28, every
  power of two from 32, Camelyon's 96, ..."""
  return image_halvings(size) is not None


def resume_checked_flags() -> tuple:
  """Every flag a resumed run must keep (see RESUME_FREE_FLAGS)."""
  return tuple(f.name for f in dataclasses.fields(TrainConfig)
               if f.name not in RESUME_FREE_FLAGS)


def started_with(run_config: dict, name: str):
  """A flag's value in a run's run_config.json: runs started before the flag
  existed were built with its default."""
  return run_config.get(name, getattr(TrainConfig, name))


def read_run_config(model_dir: str) -> Optional[dict]:
  """The flags the run in model_dir was started with, or None."""
  path = os.path.join(model_dir, RUN_CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_run_config(c: 'TrainConfig') -> None:
  """Records the flags a run starts with, atomically; the seed stays secret
  (it is kept only in the checkpoint)."""
  files.write_json_atomically(os.path.join(c.model_dir, RUN_CONFIG_FILE),
                              dataclasses.asdict(c) | {'seed': None})


@dataclasses.dataclass
class TrainConfig:
  """Everything a training run depends on (see train.py for the flags)."""
  dataset: str = 'fashion_mnist'
  model_dir: str = ''
  export_dir: Optional[str] = None
  data_dir: Optional[str] = None
  manual_dir: Optional[str] = None
  max_train_examples: Optional[int] = None
  # The images' side and channels (None: the dataset's own; other sizes are
  # centre-cropped and resized), and CelebA's attribute taken as the class.
  image_size: Optional[int] = None
  image_channels: Optional[int] = None
  celeb_a_attribute: str = 'Male'
  # Privacy.
  target_epsilon: Optional[float] = None
  noise_multiplier: Optional[float] = None
  delta: float = 1e-5
  l2_norm_clip: float = 1.0
  batch_size: int = 64
  num_microbatches: Optional[int] = None
  sampling: str = 'poisson'
  grad_engine: str = 'ghost'
  chunk_size: int = 128
  # GAN.
  epochs: float = 1.0
  n_critic: int = 1
  # Generator updates per generator step: they read no real data, so they add
  # generator progress at no privacy cost (compute only).
  n_generator: int = 1
  loss: str = 'hinge'
  # How the critic loss's term on fakes is taken (gan.py): 'paired' with a
  # real example in one private record, or 'public', apart and unnoised.
  fake_gradient: str = 'paired'
  gp_weight: float = 10.0
  critic_weight_clip: float = 0.0
  latent_dim: int = 64
  generator_width: int = 64
  generator_upsampling: str = 'transposed'
  critic_width: int = 32
  critic_norm: str = 'none'
  # The networks' arithmetic (networks.compute_dtype); variables, norms,
  # clipping and noise stay float32. 'auto' is resolved by
  # networks.resolve_compute_dtype before a run starts.
  compute_dtype: str = 'float32'
  generator_lr: float = 2e-4
  critic_lr: float = 2e-4
  beta_1: float = 0.5
  beta_2: float = 0.999
  # The critic's own Adam beta_1 (None: beta_1). Its noise is independent
  # from step to step, so more momentum averages more of it away.
  critic_beta_1: Optional[float] = None
  # Decay of an exponential moving average of the generator's weights; the
  # average (not the last iterate) is sampled and exported. 0 turns it off.
  generator_ema: float = 0.0
  # The export's `generate` returns the best of this many candidates by the
  # critic's score (post-processing; export.py). 1 turns it off.
  sample_candidates: int = 1
  # A private warm start (warm_start.py) before DP-SGD: 'none' or
  # 'mean_embedding', the share of --target_epsilon its release alone may
  # spend, and its pre-training.
  warm_start: str = 'none'
  warm_start_epsilon_share: float = 0.3
  warm_start_steps: int = 2000
  warm_start_features: int = 5000
  warm_start_length_scale: float = 5.0
  warm_start_lr: float = 1e-3
  seed: Optional[int] = None
  # Monitoring and output.
  checkpoint_every: int = 200
  sample_every: int = 200
  log_every: int = 50
  keep_checkpoints: int = 3
  nonprivate_diagnostics: bool = False
  # 'START,STOP': trace generator steps START..STOP with TensorFlow's
  # profiler, into <model_dir>/nonprivate/profile (profile_range). Empty:
  # no trace.
  profile_steps: str = ''
  strategy: str = 'default'
  # How long a multi-worker run waits for every worker of TF_CONFIG to
  # start before giving up (cluster.py).
  cluster_timeout: int = 600

  @property
  def has_dp_sgd_phase(self) -> bool:
    """False when a warm start's release takes the whole budget
    (--warm_start_epsilon_share=1): the critic is never trained and the
    pre-trained generator is the result."""
    return self.warm_start == 'none' or self.warm_start_epsilon_share < 1

  @property
  def microbatch_size(self) -> int:
    if self.num_microbatches is None:
      return 1
    return self.batch_size // self.num_microbatches


def profile_range(c: 'TrainConfig') -> Optional[tuple]:
  """--profile_steps as (first, last) generator steps, both traced, or
  None when empty."""
  if not c.profile_steps:
    return None
  message = (f'--profile_steps={c.profile_steps!r} must be "START,STOP": two '
             'generator steps with 1 <= START <= STOP.')
  try:
    first, last = (int(step) for step in c.profile_steps.split(','))
  except ValueError:
    raise ValueError(message) from None
  require(1 <= first <= last, message)
  return first, last


def require(condition: bool, message: str, error=ValueError) -> None:
  """Raises `error` (a ValueError: the entry points print it as one line and
  exit non-zero) with a message naming the flag, unless `condition`."""
  if not condition:
    raise error(message)


def validate(c: TrainConfig) -> None:
  """Raises ValueError naming the flag for any value that cannot work."""
  require(bool(c.model_dir), '--model_dir is required (checkpoints and '
          'TensorBoard logs go there).')
  for name, choices in CHOICES.items():
    require(getattr(c, name) in choices, f'--{name}={getattr(c, name)!r}: '
            f'choose one of {choices}.')
  _validate_images(c)
  _validate_privacy(c)
  _validate_critic_step(c)
  _validate_ranges(c)
  _validate_warm_start(c)
  profile_range(c)


def _validate_images(c: TrainConfig) -> None:
  if c.image_size is not None:
    require(supported_image_size(c.image_size),
            f'--image_size={c.image_size}: the networks build for sides '
            'that halve at least twice down to 6-12 pixels (28, 32, 48, 64, '
            '96, 128, ...).')
  if c.image_channels is not None:
    require(c.image_channels in IMAGE_CHANNELS,
            f'--image_channels={c.image_channels}: choose one of '
            f'{IMAGE_CHANNELS}.')


def _validate_privacy(c: TrainConfig) -> None:
  require(c.target_epsilon is not None or c.noise_multiplier is not None,
          'set --target_epsilon (sigma is calibrated to it) or '
          '--noise_multiplier (epsilon is reported).')
  if c.target_epsilon is not None:
    require(c.target_epsilon > 0, f'--target_epsilon={c.target_epsilon} must '
            'be > 0.')
  if c.noise_multiplier is not None:
    require(c.noise_multiplier > 0, f'--noise_multiplier='
            f'{c.noise_multiplier} must be > 0 (no noise means no privacy).')
  require(0 < c.delta < 1, f'--delta={c.delta} must be in (0, 1/N).')
  require(c.l2_norm_clip > 0, f'--l2_norm_clip={c.l2_norm_clip} must be > 0.')
  require(c.batch_size >= 1, f'--batch_size={c.batch_size} must be >= 1.')
  if c.max_train_examples is not None:
    require(c.max_train_examples >= 1,
            f'--max_train_examples={c.max_train_examples} must be >= 1.')
  if c.num_microbatches is not None:
    require(c.num_microbatches >= 1 and c.batch_size % c.num_microbatches == 0,
            f'--num_microbatches={c.num_microbatches} must divide '
            f'--batch_size={c.batch_size}.')
    require(c.sampling == 'shuffle' or c.microbatch_size == 1,
            f'--num_microbatches={c.num_microbatches} groups several examples '
            'per microbatch, which needs fixed-size batches: use '
            '--sampling=shuffle, or leave --num_microbatches unset for one '
            'example per microbatch.')
  if c.seed is not None:
    require(0 <= c.seed < 2**63, f'--seed={c.seed} must be in [0, 2^63).')


def _validate_critic_step(c: TrainConfig) -> None:
  """Combinations of the loss, the fakes' gradient, the engine and the
  strategy that cannot work together."""
  if c.loss == 'wasserstein':
    require(c.critic_weight_clip > 0, '--loss=wasserstein needs '
            '--critic_weight_clip > 0 (the WGAN Lipschitz constraint).')
  if c.fake_gradient == 'public':
    require(c.loss != 'wgan_gp', '--fake_gradient=public does not work with '
            '--loss=wgan_gp: the gradient penalty is taken between a real '
            'example and its paired fake.')
    require(c.grad_engine != 'jacobian', '--fake_gradient=public needs '
            '--grad_engine=ghost or vectorized (the jacobian path clips '
            'inside the DP optimizer, which would noise the fakes too).')
  require(c.compute_dtype == 'float32' or c.grad_engine != 'jacobian',
          f'--compute_dtype={c.compute_dtype} needs --grad_engine=ghost or '
          'vectorized (the jacobian path clips inside the DP optimizer, at C '
          'and not at the bound that covers bfloat16 rounding).')
  require(c.strategy == 'default' or c.grad_engine != 'jacobian',
          f'--strategy={c.strategy} needs --grad_engine=ghost or vectorized '
          '(the jacobian path would add noise on every replica).')


def _validate_ranges(c: TrainConfig) -> None:
  require(c.critic_weight_clip >= 0,
          f'--critic_weight_clip={c.critic_weight_clip} must be >= 0.')
  require(c.epochs > 0, f'--epochs={c.epochs} must be > 0.')
  require(c.chunk_size >= 1, f'--chunk_size={c.chunk_size} must be >= 1.')
  for name in ('n_critic', 'n_generator', 'checkpoint_every', 'sample_every',
               'log_every', 'keep_checkpoints', 'latent_dim',
               'generator_width', 'critic_width', 'sample_candidates',
               'warm_start_steps', 'warm_start_features', 'cluster_timeout'):
    require(getattr(c, name) >= 1,
            f'--{name}={getattr(c, name)} must be >= 1.')
  for name in ('generator_lr', 'critic_lr', 'warm_start_length_scale',
               'warm_start_lr'):
    require(getattr(c, name) > 0, f'--{name}={getattr(c, name)} must be > 0.')
  for name in ('beta_1', 'beta_2', 'critic_beta_1', 'generator_ema'):
    if getattr(c, name) is None:
      continue
    require(0 <= getattr(c, name) < 1,
            f'--{name}={getattr(c, name)} must be in [0, 1).')


def _validate_warm_start(c: TrainConfig) -> None:
  require(0 < c.warm_start_epsilon_share <= 1,
          f'--warm_start_epsilon_share={c.warm_start_epsilon_share} must be '
          'in (0, 1].')
  if c.warm_start == 'none':
    return
  require(c.target_epsilon is not None,
          f'--warm_start={c.warm_start} needs --target_epsilon: its release '
          'is calibrated to --warm_start_epsilon_share of it.')
  if not c.has_dp_sgd_phase:
    require(c.noise_multiplier is None,
            f'--noise_multiplier={c.noise_multiplier}: with '
            '--warm_start_epsilon_share=1 there is no DP-SGD phase to use it.')
    require(c.sample_candidates == 1,
            f'--sample_candidates={c.sample_candidates} needs a trained '
            'critic to choose among candidates; with '
            '--warm_start_epsilon_share=1 the critic is never trained.')
  require(c.strategy == 'default',
          f'--warm_start={c.warm_start} needs --strategy=default (its '
          'pre-training runs on one device).')


def validate_against_data(c: TrainConfig, dataset_size: int) -> None:
  """Checks that depend on N, the number of training examples."""
  require(c.batch_size <= dataset_size,
          f'--batch_size={c.batch_size} is larger than the training set '
          f'({dataset_size} examples).')
  require(c.delta < 1.0 / dataset_size,
          f'--delta={c.delta} must be below 1/N = {1.0 / dataset_size:.3g} '
          f'(N={dataset_size} training examples): a larger delta allows '
          'releasing whole examples.')
