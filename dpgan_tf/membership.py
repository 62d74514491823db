"""Membership inference against the trained critic: empirical privacy.

The critic is the only network that read the training set, so it is what an
attacker would probe: if it scores the examples it was trained on (members)
higher than fresh examples from the same distribution (non-members), its
scores leak membership. DP-SGD bounds any such attack: with (epsilon, delta)
-DP the attacker's advantage TPR - FPR is at most
(e^epsilon - 1 + 2 delta) / (e^epsilon + 1) at every threshold (Yeom et al.,
2018; Kairouz et al., 2015), so a measured advantage is an empirical lower
bound to set against the accounted guarantee.

Attacks: TF-Privacy's membership-inference attacks (the optional extra in
requirements-attacks.txt, package `tensorflow-empirical-privacy`, which puts
them under tensorflow_privacy.privacy.privacy_tests): a threshold attack and
a logistic-regression attack on the critic score, fed as a loss (-score:
members should have the lower loss). Without the extra, a built-in threshold
attack computes the same two numbers as TF-Privacy's threshold attack:
ROC AUC, and advantage = max over thresholds of |TPR - FPR|.
"""

import json
import os
from typing import Optional, Tuple

from absl import logging
import numpy as np
from sklearn import metrics
import tensorflow as tf

from dpgan_tf import config as config_lib
from dpgan_tf import data as data_lib
from dpgan_tf import networks

TF_PRIVACY = 'tensorflow-empirical-privacy'
BUILTIN = 'builtin-threshold'
IMPLEMENTATIONS = ('auto', TF_PRIVACY, BUILTIN)


class MembershipError(ValueError):
  """The training run in --model_dir cannot be attacked; names the problem."""


def read_run_config(model_dir: str, spec: data_lib.DatasetSpec) -> dict:
  """run_config.json of the run; checks it trained on `spec`'s dataset."""
  path = os.path.join(model_dir, config_lib.RUN_CONFIG_FILE)
  try:
    with open(path) as f:
      run_config = json.load(f)
  except (OSError, ValueError) as e:
    raise MembershipError(f'--model_dir: {path} is missing or unreadable '
                          f'({e}); is {model_dir} a training run?') from e
  if run_config.get('dataset') != spec.name:
    raise MembershipError(
        f'--model_dir={model_dir} trained on {run_config.get("dataset")!r}, '
        f'not --dataset={spec.name}.')
  if tf.train.latest_checkpoint(model_dir) is None:
    raise MembershipError(f'--model_dir={model_dir} holds no checkpoint.')
  return run_config


def load_critic(model_dir: str, spec: data_lib.DatasetSpec,
                run_config: dict) -> Tuple[tf.keras.Model, str]:
  """The critic of the latest checkpoint in model_dir, and that path."""
  critic = networks.build_critic(
      spec.image_shape, spec.num_classes, run_config['critic_width'],
      config_lib.started_with(run_config, 'critic_norm'))
  path = tf.train.latest_checkpoint(model_dir)
  try:
    tf.train.Checkpoint(critic=critic).restore(
        path).expect_partial().assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:
    raise MembershipError(f'--model_dir: the critic in {path} does not match '
                          f'a {spec.name} critic of width '
                          f'{run_config["critic_width"]}: {e}') from e
  return critic, path


def critic_scores(critic: tf.keras.Model, images: np.ndarray,
                  labels: np.ndarray, batch_size: int = 1024) -> np.ndarray:
  """Scores [N] of uint8 images with their labels (higher: 'more real')."""
  scores = []
  for start in range(0, len(images), batch_size):
    scores.append(critic([data_lib.to_model_range(
        images[start:start + batch_size]), labels[start:start + batch_size]],
                         training=False).numpy())
  return np.concatenate(scores)


def balanced_indices(num_members: int, num_nonmembers: int,
                     seed: int) -> Tuple[np.ndarray, np.ndarray]:
  """Equal-sized random subsets of member and non-member indices.

  Balanced sets make the attacker's base rate 1/2, the setting in which the
  advantage bound below is stated.
  """
  n = min(num_members, num_nonmembers)
  rng = np.random.default_rng(seed)
  return (np.sort(rng.choice(num_members, n, replace=False)),
          np.sort(rng.choice(num_nonmembers, n, replace=False)))


def _tf_privacy_attacks():
  """TF-Privacy's attack modules, or (None, why) when the extra is absent."""
  try:
    # pylint: disable=g-import-not-at-top
    from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import data_structures
    from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import membership_inference_attack as mia
  except ImportError as e:
    return None, f'{TF_PRIVACY} is not importable ({e})'
  return (mia, data_structures), None


def builtin_threshold_attack(member_scores: np.ndarray,
                             nonmember_scores: np.ndarray) -> dict:
  """TF-Privacy's threshold attack, with sklearn: {'auc', 'advantage'}."""
  is_member = np.concatenate([np.ones(len(member_scores)),
                              np.zeros(len(nonmember_scores))])
  fpr, tpr, _ = metrics.roc_curve(
      is_member, np.concatenate([member_scores, nonmember_scores]))
  return {'auc': float(metrics.auc(fpr, tpr)),
          'advantage': float(np.max(np.abs(tpr - fpr)))}


def run_attacks(member_scores: np.ndarray, nonmember_scores: np.ndarray,
                implementation: str = 'auto') -> dict:
  """Attacks on critic scores of members vs non-members.

  Args:
    member_scores: critic scores [M] of training examples.
    nonmember_scores: critic scores [N] of held-out examples.
    implementation: 'auto' (TF-Privacy when importable, else built-in),
      TF_PRIVACY or BUILTIN.

  Returns:
    {'implementation', 'attacks': {name: {'auc', 'advantage'}}, 'auc' and
    'advantage' (the strongest attack's), 'num_members', 'num_nonmembers'},
    plus 'fallback_reason' when 'auto' fell back to the built-in attack.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'implementation={implementation!r}; choose one of '
                     f'{IMPLEMENTATIONS}.')
  modules, why_not = (None, 'built-in requested')
  if implementation != BUILTIN:
    modules, why_not = _tf_privacy_attacks()
    if modules is None and implementation == TF_PRIVACY:
      raise MembershipError(f'{why_not}; pip install -r '
                            'requirements-attacks.txt')
  result = {'num_members': len(member_scores),
            'num_nonmembers': len(nonmember_scores)}
  if modules is None:
    result['implementation'] = BUILTIN
    if implementation == 'auto':
      result['fallback_reason'] = why_not
      logging.info('Membership inference: %s; running the built-in threshold '
                   'attack.', why_not)
    attacks = {'threshold_attack': builtin_threshold_attack(
        member_scores, nonmember_scores)}
  else:
    mia, ds = modules
    result['implementation'] = TF_PRIVACY
    # Its epsilon lower bounds divide by zero on well-separated scores.
    with np.errstate(divide='ignore', invalid='ignore'):
      results = mia.run_attacks(
          ds.AttackInputData(
              loss_train=-np.asarray(member_scores, np.float64),
              loss_test=-np.asarray(nonmember_scores, np.float64)),
          ds.SlicingSpec(entire_dataset=True),
          attack_types=[ds.AttackType.THRESHOLD_ATTACK,
                        ds.AttackType.LOGISTIC_REGRESSION])
    attacks = {
        r.attack_type.name.lower(): {'auc': float(r.get_auc()),
                                     'advantage': float(
                                         r.get_attacker_advantage())}
        for r in results.single_attack_results}
  result['attacks'] = attacks
  result['auc'] = max(a['auc'] for a in attacks.values())
  result['advantage'] = max(a['advantage'] for a in attacks.values())
  return result


def advantage_bound(epsilon: float, delta: float) -> float:
  """The largest TPR - FPR any attack can reach under (epsilon, delta)-DP."""
  return min(1.0, (np.expm1(epsilon) + 2 * delta) / (np.exp(epsilon) + 1))


def attack_critic(model_dir: str, spec: data_lib.DatasetSpec,
                  train_split: data_lib.LabeledImages,
                  test_split: data_lib.LabeledImages, seed: int,
                  run_config: Optional[dict] = None,
                  implementation: str = 'auto') -> dict:
  """Membership inference against the critic of the run in model_dir.

  Members are the first K training examples, K being the run's
  max_train_examples (the whole split when unset): exactly the set the run
  trained on. Non-members come from held-out examples never seen in training
  (the test split, or training examples past the first K).
  Equal numbers of each are drawn at random (seeded).

  Args:
    model_dir: the training run.
    spec: its dataset.
    train_split: at least its first K training examples, in tfds order.
    test_split: the held-out examples (non-members).
    seed: member/non-member subsampling.
    run_config: run_config.json's contents (read from model_dir if None).
    implementation: see run_attacks.

  Returns:
    run_attacks's result, with 'checkpoint' and 'members'.
  """
  run_config = run_config or read_run_config(model_dir, spec)
  critic, checkpoint = load_critic(model_dir, spec, run_config)
  k = run_config.get('max_train_examples') or len(train_split)
  if len(train_split) < k:
    raise MembershipError(f'the run trained on {k} examples but only '
                          f'{len(train_split)} training examples were loaded.')
  members, nonmembers = balanced_indices(k, len(test_split), seed)
  logging.info('Membership inference: scoring %d members and %d non-members '
               'with the critic of %s', len(members), len(nonmembers),
               checkpoint)
  result = run_attacks(
      critic_scores(critic, train_split.images[members],
                    train_split.labels[members]),
      critic_scores(critic, test_split.images[nonmembers],
                    test_split.labels[nonmembers]), implementation)
  result['checkpoint'] = checkpoint
  result['members'] = f'first {k} training examples (sampled {len(members)})'
  return result
