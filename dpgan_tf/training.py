"""A private training run from a TrainConfig: plan, resume, fit, export.

Order matters for the guarantee and for not losing work:
1. Every check that can fail runs before anything is written.
2. The privacy plan (sigma, q, and the last critic step within budget) is
   fixed before the first update; a resumed run takes sigma from the ledger in
   its checkpoint and refuses flags that would change what was promised.
3. The ledger is checkpointed with the weights; epsilon is always computed
   from it.
"""

import dataclasses
import math
import os
import secrets
import sys
from typing import Optional

from absl import logging
import tensorflow as tf
import tensorflow_privacy

from dpgan_tf import callbacks as callbacks_lib
from dpgan_tf import cluster
from dpgan_tf import config as config_lib
from dpgan_tf import data as data_lib
from dpgan_tf import export as export_lib
from dpgan_tf import files
from dpgan_tf import gan
from dpgan_tf import image_grid
from dpgan_tf import networks
from dpgan_tf import privacy
from dpgan_tf import batching
from dpgan_tf import warm_start

class ResumeMismatch(ValueError):
  """A flag differs from the run being resumed; names the flag."""


def make_checkpoint(model: gan.ConditionalDPGAN,
                    warm: Optional[warm_start.WarmStart] = None
                    ) -> tf.train.Checkpoint:
  """Both networks, both optimizers, counters, RNG seed and the ledger (and
  the generator's moving average and the warm start's state, if kept). The
  optimizers keep the keys they had before their attributes were renamed, so
  older runs resume."""
  optional = {} if model.ema_generator is None else {
      'generator_ema': model.ema_generator}
  if warm is not None:
    optional['warm_start'] = warm
  return tf.train.Checkpoint(
      generator=model.generator, critic=model.critic,
      d_optimizer=model.critic_optimizer, g_optimizer=model.generator_optimizer,
      ledger=model.ledger, generator_steps=model.generator_steps,
      seed=model.seed, **optional)


def check_resume_generator_ema(c: config_lib.TrainConfig) -> None:
  """A moving average cannot be started or dropped halfway: the checkpoint
  either holds one for every step so far or none."""
  names = [name for name, _ in tf.train.list_variables(
      tf.train.latest_checkpoint(c.model_dir))]
  saved = any(name.startswith('generator_ema/') for name in names)
  if saved != (c.generator_ema > 0):
    raise ResumeMismatch(
        f'--generator_ema={c.generator_ema}: the run in --model_dir='
        f'{c.model_dir} was started {"with" if saved else "without"} a '
        'moving average of the generator. Resume with --generator_ema '
        f'{"> 0" if saved else "=0"}, or use a new --model_dir.')


def check_resume_flags(c: config_lib.TrainConfig) -> None:
  """Names the first flag that would make a resumed step compute something
  else than the run it continues (config.RESUME_FREE_FLAGS), before
  anything is restored."""
  started = config_lib.read_run_config(c.model_dir)
  if started is None:
    return
  _refuse_changes(c, {
      f'--{name}': (config_lib.started_with(started, name), getattr(c, name))
      for name in config_lib.resume_checked_flags()
  }, 'a resume replays the noise of the steps after the last checkpoint, so '
     'it must compute what they computed')


def check_resume_warm_start(c: config_lib.TrainConfig, saved: dict) -> None:
  """A warm start cannot be added to or dropped from a run: its release is
  part of the guarantee of every step after it (the checkpoint's ledger
  says whether the run has one)."""
  started = saved['warm_start_noise_multiplier'] > 0
  if started != (c.warm_start != 'none'):
    raise ResumeMismatch(
        f'--warm_start={c.warm_start}: the run in --model_dir={c.model_dir} '
        f'was started {"with" if started else "without"} a warm start; '
        'resuming would change the privacy guarantee. Use a new --model_dir '
        'or the original value.')


def read_saved_ledger(model_dir: str) -> Optional[privacy.PrivacyLedger]:
  """The ledger of the latest checkpoint in model_dir, or None."""
  latest = tf.train.latest_checkpoint(model_dir)
  if latest is None:
    return None
  # With the warm start's variables: they stay 0 if the run has none.
  ledger = privacy.PrivacyLedger(warm_start_noise_multiplier=0.0)
  tf.train.Checkpoint(ledger=ledger).restore(latest).expect_partial()
  return ledger


def check_resume(c: config_lib.TrainConfig, saved: dict,
                 dataset_size: Optional[int] = None):
  """Refuses flags that change the guarantee of the run being resumed.

  Called before the data is loaded (dataset_size None: the flags alone, so a
  wrong --dataset fails at once) and again with N for what depends on it.
  """
  expected = {
      '--dataset': (saved['dataset'], c.dataset),
      '--l2_norm_clip': (saved['l2_norm_clip'], c.l2_norm_clip),
      '--delta': (saved['delta'], c.delta),
      '--sampling': (saved['sampling'], c.sampling),
      '--num_microbatches (microbatch size)': (saved['microbatch_size'],
                                               c.microbatch_size),
  }
  if c.noise_multiplier is not None:
    expected['--noise_multiplier'] = (saved['noise_multiplier'],
                                      c.noise_multiplier)
  if dataset_size is not None:
    expected['--max_train_examples (training set size)'] = (
        saved['dataset_size'], dataset_size)
    expected['--batch_size (sampling rate)'] = (saved['sampling_rate'],
                                                c.batch_size / dataset_size)
  _refuse_changes(c, expected, 'resuming would change the privacy guarantee')


def _refuse_changes(c: config_lib.TrainConfig, expected: dict,
                    consequence: str) -> None:
  """Raises ResumeMismatch naming the first flag whose (was, now) differ."""
  for flag, (was, now) in expected.items():
    same = math.isclose(was, now, rel_tol=1e-9) if isinstance(
        was, float) else was == now
    if not same:
      raise ResumeMismatch(
          f'{flag}: the run in --model_dir={c.model_dir} was started with '
          f'{was!r}, this command gives {now!r}; {consequence}. Use a new '
          '--model_dir or the original value.')


def export_metadata(c: config_lib.TrainConfig, ledger: privacy.PrivacyLedger,
                    spec: data_lib.DatasetSpec) -> dict:
  d = ledger.as_dict()
  return {
      'dataset': c.dataset,
      'dataset_options': data_lib.dataset_options(c),
      'image_shape': list(spec.image_shape),
      'num_classes': spec.num_classes,
      'class_names': list(spec.class_names),
      'latent_dim': c.latent_dim,
      'generator_ema': c.generator_ema,
      'sample_candidates': c.sample_candidates,
      'epsilon': ledger.epsilon(),
      'delta': d['delta'],
      # None: no DP-SGD phase (--warm_start_epsilon_share=1).
      'noise_multiplier': d['noise_multiplier'] or None,
      'sampling_rate': d['sampling_rate'],
      'sampling': d['sampling'],
      'critic_steps': d['critic_steps'],
      'accountant': privacy.ACCOUNTANT,
      'l2_norm_clip': d['l2_norm_clip'],
      'microbatch_size': d['microbatch_size'],
      'batch_size': c.batch_size,
      'dataset_size': d['dataset_size'],
      'guarantee': privacy.guarantee_statement(ledger),
      'warm_start': warm_start.metadata(c, ledger),
      'tensorflow_version': tf.__version__,
      'tensorflow_privacy_version': tensorflow_privacy.__version__,
  }


def gan_options(c: config_lib.TrainConfig, num_classes: int) -> gan.GANOptions:
  """The model's options: the flags of the same name, and the expected
  batch size and moving-average decay the flags call otherwise."""
  same = {f.name: getattr(c, f.name) for f in dataclasses.fields(gan.GANOptions)
          if hasattr(c, f.name)}
  return gan.GANOptions(num_classes=num_classes,
                        expected_batch_size=c.batch_size,
                        ema_decay=c.generator_ema, **same)


def planned_warm_start_noise_multiplier(
    c: config_lib.TrainConfig,
    saved: Optional[privacy.PrivacyLedger]) -> Optional[float]:
  """The warm start's sigma: the resumed run's, or calibrated to its share of
  the budget; None without a warm start."""
  if c.warm_start == 'none':
    return None
  if saved is not None:
    return saved.as_dict()['warm_start_noise_multiplier']
  return privacy.calibrate_warm_start_noise_multiplier(
      c.warm_start_epsilon_share * c.target_epsilon, c.delta)


def make_optimizers(c: config_lib.TrainConfig, sigma: float,
                    noise_seed: tf.Variable):
  """(critic's DP Adam, generator's Adam), as the flags set them.

  The critic may have its own beta_1 (--critic_beta_1): its gradients carry
  fresh Gaussian noise every step, which momentum averages, while the
  generator's gradients are noise-free.
  """
  num_microbatches = None if c.microbatch_size == 1 else c.num_microbatches
  critic_beta_1 = c.beta_1 if c.critic_beta_1 is None else c.critic_beta_1
  critic_optimizer = privacy.DPCriticAdamOptimizer(
      c.l2_norm_clip, sigma, num_microbatches, noise_seed, c.grad_engine,
      c.chunk_size, learning_rate=c.critic_lr, beta_1=critic_beta_1,
      beta_2=c.beta_2)
  generator_optimizer = tf.keras.optimizers.legacy.Adam(
      c.generator_lr, beta_1=c.beta_1, beta_2=c.beta_2)
  return critic_optimizer, generator_optimizer


@dataclasses.dataclass
class TrainResult:
  epsilon: float
  critic_steps: int
  generator_steps: int
  export_path: Optional[str]
  stopped_by_budget: bool
  message: str
  guarantee: str  # privacy.guarantee_statement: figures, accountant, sampling


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
  """What the run may spend, fixed before its first update."""
  sigma: float
  warm_sigma: Optional[float]  # The warm start's, if any.
  sampling_rate: float
  curve: privacy.EpsilonCurve
  generator_steps_per_epoch: int
  planned_generator_steps: int
  # The last generator step within the budget (or the planned epochs).
  total_generator_steps: int

  @property
  def stopped_by_budget(self) -> bool:
    return self.total_generator_steps < self.planned_generator_steps


def check_before_start(c: config_lib.TrainConfig):
  """Every check that needs no data, before anything is read or written;
  returns (strategy, the dataset's spec, the ledger of the run being resumed
  or None)."""
  spec = data_lib.get_spec(c.dataset, data_dir=c.data_dir,
                           **data_lib.dataset_options(c))
  config_lib.validate(c)
  # Before any TensorFlow op: MultiWorkerMirroredStrategy must configure the
  # collective ops at program startup.
  strategy = cluster.make_strategy(c)
  files.check_writable_dir(c.model_dir, '--model_dir')
  if c.export_dir:
    files.check_writable_dir(c.export_dir, '--export_dir')
  saved = read_saved_ledger(c.model_dir)
  if saved is not None:
    check_resume(c, saved.as_dict())
    check_resume_warm_start(c, saved.as_dict())
    check_resume_generator_ema(c)
    check_resume_flags(c)
  return strategy, spec, saved


def plan_privacy(c: config_lib.TrainConfig,
                 saved: Optional[privacy.PrivacyLedger],
                 sampler: batching.CriticBatchSampler, n: int) -> PrivacyPlan:
  """sigma (the resumed run's, the flag's, or calibrated to the target) and
  the last step within the budget."""
  generator_steps_per_epoch = max(1, sampler.steps_per_epoch // c.n_critic)
  planned_generator_steps = (max(1, int(c.epochs * generator_steps_per_epoch))
                             if c.has_dp_sgd_phase else 0)
  planned_critic_steps = planned_generator_steps * c.n_critic
  q = sampler.sampling_probability
  warm_sigma = planned_warm_start_noise_multiplier(c, saved)
  if saved is not None:
    check_resume(c, saved.as_dict(), n)
  if not c.has_dp_sgd_phase:
    sigma = 0.0  # No critic step: EpsilonCurve's "no DP-SGD phase".
  elif saved is not None:
    sigma = saved.as_dict()['noise_multiplier']
  elif c.noise_multiplier is not None:
    sigma = c.noise_multiplier
  else:
    sigma = privacy.calibrate_noise_multiplier(
        c.target_epsilon, c.delta, q, planned_critic_steps, c.microbatch_size,
        warm_sigma or 0.0)
  # The critic's steps come after the warm start's release.
  curve = privacy.EpsilonCurve(sigma, q, c.delta, c.microbatch_size,
                               warm_sigma or 0.0)
  allowed_critic_steps = planned_critic_steps
  if c.target_epsilon is not None:
    allowed_critic_steps = curve.max_steps(c.target_epsilon,
                                           planned_critic_steps)
  return PrivacyPlan(sigma, warm_sigma, q, curve, generator_steps_per_epoch,
                     planned_generator_steps,
                     allowed_critic_steps // c.n_critic)


def build_model(c: config_lib.TrainConfig, spec: data_lib.DatasetSpec,
                plan: PrivacyPlan, ledger: privacy.PrivacyLedger,
                strategy: tf.distribute.Strategy, seed: int):
  """(model, warm start or None, checkpoint), built in the strategy's scope."""
  with strategy.scope(), networks.compute_dtype(c.compute_dtype):
    generator = networks.build_generator(spec.image_shape, spec.num_classes,
                                         c.latent_dim, c.generator_width,
                                         c.generator_upsampling)
    critic = networks.build_critic(spec.image_shape, spec.num_classes,
                                   c.critic_width, c.critic_norm)
    ema_generator = None
    if c.generator_ema > 0:
      ema_generator = tf.keras.models.clone_model(generator)
      ema_generator.set_weights(generator.get_weights())
    model = gan.ConditionalDPGAN(
        generator, critic, ledger, gan_options(c, spec.num_classes),
        seed=seed, ema_generator=ema_generator)
    model.compile(*make_optimizers(c, plan.sigma, model.noise_seed))
    warm = None if plan.warm_sigma is None else warm_start.WarmStart(
        spec.num_classes, c.warm_start_features, c.warm_start_lr)
    return model, warm, make_checkpoint(model, warm)


def restore_or_start(c: config_lib.TrainConfig, chief: bool,
                     checkpoint: tf.train.Checkpoint,
                     model: gan.ConditionalDPGAN) -> int:
  """Restores the latest checkpoint, or records the run's flags; returns the
  generator steps already taken."""
  latest_checkpoint = tf.train.latest_checkpoint(c.model_dir)
  if latest_checkpoint:
    checkpoint.restore(latest_checkpoint).assert_existing_objects_matched()
    logging.info('Resumed from %s', latest_checkpoint)
  elif chief:
    os.makedirs(c.model_dir, exist_ok=True)
    config_lib.write_run_config(c)
  done = int(model.generator_steps.numpy())
  critic_steps = int(model.ledger.critic_steps.numpy())
  if critic_steps != done * c.n_critic:
    raise ResumeMismatch(
        f'--n_critic={c.n_critic}: the checkpoint holds {critic_steps} critic '
        f'steps for {done} generator steps; resume with the original '
        '--n_critic.')
  return done


def make_callbacks(c: config_lib.TrainConfig, chief: bool,
                   spec: data_lib.DatasetSpec, plan: PrivacyPlan,
                   model: gan.ConditionalDPGAN,
                   manager: tf.train.CheckpointManager) -> list:
  """epsilon first, then the divergence guard, checkpoints and (the chief's)
  TensorBoard logs and --profile_steps trace (callbacks.py)."""
  monitor = callbacks_lib.PrivacyMonitor(model.ledger, plan.curve,
                                         c.target_epsilon, c.log_every,
                                         plan.total_generator_steps)
  cbs = [monitor, callbacks_lib.NonFiniteGuard(),
         callbacks_lib.PeriodicCheckpoint(manager, c.checkpoint_every)]
  if chief:
    cbs.append(callbacks_lib.TensorBoardMonitor(
        os.path.join(c.model_dir, 'train'), spec.num_classes, c.latent_dim,
        c.batch_size * c.n_critic, c.sample_every, c.log_every))
    profile = config_lib.profile_range(c)
    if profile:
      cbs.append(callbacks_lib.ProfileSteps(
          os.path.join(c.model_dir, 'nonprivate', 'profile'), *profile,
          plan.total_generator_steps))
  return cbs


def fit(c: config_lib.TrainConfig, model: gan.ConditionalDPGAN,
        sampler: batching.CriticBatchSampler, plan: PrivacyPlan, done: int,
        cbs: list) -> None:
  """Generator steps done..total, one Keras epoch per pass over the data."""
  if not c.has_dp_sgd_phase:
    logging.info('No DP-SGD phase: the warm start\'s release took the whole '
                 'budget (--warm_start_epsilon_share=1).')
    return
  logging.info('Privacy plan: sigma=%.4g q=%.4g delta=%g, %d critic steps '
               '(%d planned), %s sampling, target epsilon=%s', plan.sigma,
               plan.sampling_rate, c.delta,
               plan.total_generator_steps * c.n_critic,
               plan.planned_generator_steps * c.n_critic, c.sampling,
               c.target_epsilon)
  verbose = 1 if sys.stdout.isatty() else 0
  per_epoch = plan.generator_steps_per_epoch
  for epoch in range(done // per_epoch,
                     math.ceil(plan.total_generator_steps / per_epoch)):
    first = max(done, epoch * per_epoch)
    last = min(plan.total_generator_steps, (epoch + 1) * per_epoch)
    if last <= first:
      continue
    model.fit(sampler.dataset(first, last, c.n_critic), epochs=epoch + 1,
              initial_epoch=epoch, steps_per_epoch=last - first,
              callbacks=cbs, verbose=verbose)


def final_message(c: config_lib.TrainConfig, plan: PrivacyPlan, done: int,
                  trained: int) -> str:
  if not c.has_dp_sgd_phase:
    return ('Training finished: the warm start took the whole budget, so '
            'there was no DP-SGD phase.')
  if trained == 0:
    message = (f'Nothing to train: the run in {c.model_dir} already took '
               f'{done} of {plan.total_generator_steps} generator steps '
               'allowed')
    if plan.stopped_by_budget:
      message += (f' by the privacy budget (target epsilon '
                  f'{c.target_epsilon}); raise --target_epsilon to continue')
    return message + '.'
  if plan.stopped_by_budget:
    return (f'Stopped at the last step within the privacy budget '
            f'(target epsilon {c.target_epsilon}) before the planned '
            f'{c.epochs} epochs.')
  return 'Training finished.'


def export(c: config_lib.TrainConfig, model: gan.ConditionalDPGAN,
           spec: data_lib.DatasetSpec, scratch: Optional[str]) -> Optional[str]:
  """A new export version once more steps are taken or the sampling changes;
  returns its path (None if none was written, or on a non-chief worker)."""
  if not c.export_dir:
    return None
  latest = export_lib.latest_metadata(c.export_dir)
  steps = int(model.ledger.critic_steps.numpy())
  if latest is not None and (latest.get('critic_steps'),
                             export_lib.sample_candidates_of(latest)) == (
                                 steps, c.sample_candidates):
    return None
  # Like checkpoints, the other workers write theirs to scratch.
  path = export_lib.export_generator(
      model.sampling_generator, scratch or c.export_dir, c.latent_dim,
      export_metadata(c, model.ledger, spec), model.critic,
      c.sample_candidates)
  return None if scratch else path


def train(c: config_lib.TrainConfig) -> TrainResult:
  """Runs (or resumes) training as configured; see module doc."""
  c = dataclasses.replace(
      c, compute_dtype=networks.resolve_compute_dtype(c.compute_dtype,
                                                      c.grad_engine))
  strategy, spec, saved = check_before_start(c)
  with cluster.scratch_dir(strategy, c.model_dir) as scratch, \
      cluster.report_lost_workers(c.model_dir):
    return _train_checked(c, strategy, spec, saved, scratch)


def _train_checked(c: config_lib.TrainConfig,
                   strategy: tf.distribute.Strategy,
                   spec: data_lib.DatasetSpec,
                   saved: Optional[privacy.PrivacyLedger],
                   scratch: Optional[str]) -> TrainResult:
  """Loads, plans, restores, fits and exports. Every worker resumes from
  the chief's checkpoints (--model_dir on shared storage); saving is
  collective under MultiWorkerMirroredStrategy, so the other workers save
  too, to their scratch directory."""
  chief = cluster.is_chief(strategy)
  train_split = data_lib.load_split(spec, 'train', c.data_dir,
                                    c.manual_dir, c.max_train_examples)
  n = len(train_split)
  config_lib.validate_against_data(c, n)
  # Its seed is known only once the checkpoint is restored (set below).
  sampler = batching.CriticBatchSampler(train_split, c.batch_size,
                                        c.sampling, seed=0)
  plan = plan_privacy(c, saved, sampler, n)
  seed = c.seed if c.seed is not None else secrets.randbits(63)
  tf.keras.utils.set_random_seed(seed % 2**32)
  # Outside the strategy: the ledger is host-side accounting, not replicated
  # state (MultiWorkerMirroredStrategy cannot broadcast its strings). The
  # model counts each critic step once, in cross-replica context.
  ledger = privacy.PrivacyLedger(plan.sigma, plan.sampling_rate, c.delta, n,
                                 c.microbatch_size, c.l2_norm_clip,
                                 c.sampling, c.dataset, plan.warm_sigma)
  model, warm, checkpoint = build_model(c, spec, plan, ledger, strategy, seed)
  done = restore_or_start(c, chief, checkpoint, model)
  cluster.check_same_progress(strategy, c.model_dir, done)
  sampler.seed = seed = int(model.seed.numpy())
  if warm is not None and int(warm.steps.numpy()) < c.warm_start_steps:
    warm_start.run(c, warm, ledger, model.generator, model.ema_generator,
                   train_split, seed, checkpoint)
  # After the warm start: the manager takes over its checkpoints' rotation.
  manager = tf.train.CheckpointManager(checkpoint, scratch or c.model_dir,
                                       max_to_keep=c.keep_checkpoints)
  fit(c, model, sampler, plan, done,
      make_callbacks(c, chief, spec, plan, model, manager))
  trained = int(model.generator_steps.numpy()) - done
  if chief:
    image_grid.write_png(
        os.path.join(c.model_dir, 'samples.png'),
        image_grid.from_generator(model.sampling_generator, spec.num_classes,
                                  c.latent_dim, per_class=10),
        spec.class_names)
  return TrainResult(ledger.epsilon(), int(ledger.critic_steps.numpy()),
                     int(model.generator_steps.numpy()),
                     export(c, model, spec, scratch), plan.stopped_by_budget,
                     final_message(c, plan, done, trained),
                     privacy.guarantee_statement(ledger))
