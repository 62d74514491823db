"""The peer of critic_step.py: the same critic's DP step in Opacus (PyTorch).

The critic is networks.build_critic's for 28x28x1 images at width 64:
conv64-conv128 (4x4, stride 2, 'same' padding, LeakyReLU 0.2), a linear
score and a class projection (Miyato & Koyama), the record's loss the hinge
loss on its real example and its paired fake (the critic runs twice per
record). Steps, timed in interleaved rounds in one process (medians):

* `plain`: non-private, Adam on the batch-mean loss;
* `opacus`: Opacus's default per-sample gradients (GradSampleModule, hooks
  mode, which sums the two calls' per-sample gradients of each layer),
  clipped at 1.0 and noised with sigma = 1 by its DPOptimizer around Adam.

Opacus's ghost clipping (grad_sample_mode='ghost') does not apply: it keeps
one per-sample norm per layer, overwritten by each call of the layer, so for
a critic called on the real and the fake of a record it would clip by one
call's gradient norm instead of the record's; it is not run.

PyTorch's OpenMP threads busy-wait between operations by default; on a
2-core host shared with other processes that made its plain step 6x slower
(1095 against 180 ms at batch 64, measured side by side), so the script
sets OMP_WAIT_POLICY=PASSIVE unless it is set. It uses as many threads as
TensorFlow does (the host's cores).

Runs in its own environment (benchmarks/requirements-opacus.txt):

  /tmp/opacus-venv/bin/python benchmarks/opacus_peer.py --batch_sizes 64 256 512

The last line printed is one JSON object: `ms_<step>_b<batch>` and
`ratio_opacus_b<batch>` = Opacus DP step / plain step; peak memory as
peak_memory.METHOD.
"""

import argparse
import json
import os
import sys

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')  # Before torch loads.

# pylint: disable=g-import-not-at-top,g-bad-import-order
import torch
from torch import nn
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import interleaved
import peak_memory

NUM_CLASSES = 10


class Critic(nn.Module):
  """(images [B, 1, 28, 28], one-hot labels [B, 10]) -> scores [B]."""

  def __init__(self, width: int):
    super().__init__()
    # 'same' padding of a 4x4 stride-2 convolution on even sizes: 1 and 2;
    # TF pads the extra row and column after.
    self.pad = nn.ZeroPad2d((1, 2, 1, 2))
    self.conv1 = nn.Conv2d(1, width, 4, 2)
    self.conv2 = nn.Conv2d(width, 2 * width, 4, 2)
    features = 2 * width * 7 * 7
    self.score = nn.Linear(features, 1)
    self.class_projection = nn.Linear(NUM_CLASSES, features, bias=False)
    self.act = nn.LeakyReLU(0.2)

  def forward(self, images, one_hot):
    x = self.act(self.conv1(self.pad(images)))
    x = self.act(self.conv2(self.pad(x))).flatten(1)
    return (self.score(x)[:, 0] +
            (self.class_projection(one_hot) * x).sum(1))


def record_losses(critic, real, fake, one_hot):
  """The hinge loss of each (real, fake) record."""
  return (torch.relu(1.0 - critic(real, one_hot)) +
          torch.relu(1.0 + critic(fake, one_hot)))


def build(name: str, batch_size: int, width: int):
  """A step (no arguments) of variant `name` at `batch_size`."""
  torch.manual_seed(0)
  critic = Critic(width)
  real, fake = (torch.rand(batch_size, 1, 28, 28) * 2 - 1 for _ in range(2))
  one_hot = nn.functional.one_hot(
      torch.randint(0, NUM_CLASSES, (batch_size,)), NUM_CLASSES).float()
  if name == 'opacus':
    critic = GradSampleModule(critic)  # Hooks mode, Opacus's default.
  optimizer = torch.optim.Adam(critic.parameters(), 2e-4, betas=(0.5, 0.999))
  if name == 'opacus':
    optimizer = DPOptimizer(optimizer, noise_multiplier=1.0, max_grad_norm=1.0,
                            expected_batch_size=batch_size)

  def step():
    optimizer.zero_grad()
    record_losses(critic, real, fake, one_hot).mean().backward()
    optimizer.step()

  return step


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch_sizes', type=int, nargs='+',
                      default=[64, 256, 512])
  parser.add_argument('--width', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=15)
  parser.add_argument('--no_memory', action='store_true')
  parser.add_argument(peak_memory.FLAG, nargs=2, default=None,
                      metavar=('STEP', 'BATCH'), help=argparse.SUPPRESS)
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  if args.peak_memory_of:
    step = build(args.peak_memory_of[0], int(args.peak_memory_of[1]),
                 args.width)
    for _ in range(3):
      step()
    peak_memory.report_child_peak()
    return
  results = {'torch': torch.__version__,
             'opacus': __import__('opacus').__version__,
             'device': f'CPU x{os.cpu_count()}', 'width': args.width,
             'timing': interleaved.METHOD,
             'memory_method': peak_memory.METHOD}
  for batch_size in args.batch_sizes:
    steps = {name: build(name, batch_size, args.width)
             for name in ('plain', 'opacus')}
    for name, ms in interleaved.median_ms(steps, args.repeats).items():
      results[f'ms_{name}_b{batch_size}'] = round(ms, 2)
      print(f'{name} b{batch_size}: {ms:.1f} ms', flush=True)
    results[f'ratio_opacus_b{batch_size}'] = round(
        results[f'ms_opacus_b{batch_size}'] /
        results[f'ms_plain_b{batch_size}'], 3)
    if not args.no_memory:
      for name in steps:
        results[f'peak_rss_mb_{name}_b{batch_size}'] = peak_memory.peak_rss_mb(
            __file__, (name, batch_size, '--width', args.width))
  print(json.dumps(results))


if __name__ == '__main__':
  main()
