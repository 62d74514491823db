"""Plots downstream accuracy against epsilon from eval.py reports.

Each report is one point: x is the epsilon its run spent (`privacy.epsilon`,
from the ledger in the export), y its `metrics.accuracy_synthetic`. The
real-data ceiling (`metrics.accuracy_real`, the same classifier trained on
real examples) is drawn dashed. Published numbers can be drawn next to them
with --anchor. All reports must be of one dataset and one eval split, or the
points would not be comparable.

  python scripts/plot_accuracy_vs_epsilon.py --output=curve.png \
    --reports=a.json,b.json --anchor='DP-GAN (DPImageBench)=1:71.8,10:70.3'

results/curves/command.txt is the command that drew the committed curve.
"""

import json
import sys

from absl import app
from absl import flags
import matplotlib

matplotlib.use('Agg')  # no display needed
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

flags.DEFINE_list('reports', None, 'eval.py JSON reports, one per run.')
flags.DEFINE_string('output', None, 'PNG to write.')
flags.DEFINE_multi_string('anchor', [], "Published points: 'label=eps:acc%,"
                          "eps:acc%' (accuracy in percent).")
flags.DEFINE_string('title', None, 'Plot title (default: dataset and split).')
FLAGS = flags.FLAGS


def read_points(paths):
  """(dataset, split, [(epsilon, accuracy, real accuracy)] sorted by eps)."""
  points, kinds = [], set()
  for path in paths:
    try:
      with open(path) as f:
        report = json.load(f)
      kinds.add((report['dataset'], report['held_out']['split']))
      points.append((report['privacy']['epsilon'],
                     report['metrics']['accuracy_synthetic'],
                     report['metrics']['accuracy_real']))
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ValueError(f'--reports: {path} is not a readable eval.py report '
                       f'({type(e).__name__}: {e}).') from e
  if len(kinds) != 1:
    raise ValueError(f'--reports mix datasets or eval splits: {sorted(kinds)}.')
  (dataset, split), = kinds
  return dataset, split, sorted(points)


def parse_anchor(text):
  """'label=1:71.8,10:70.3' -> ('label', [(1.0, 0.718), (10.0, 0.703)])."""
  try:
    label, values = text.split('=', 1)
    pairs = [v.split(':') for v in values.split(',')]
    return label, [(float(e), float(a) / 100) for e, a in pairs]
  except ValueError as e:
    raise ValueError(f"--anchor={text!r}: expected 'label=eps:acc%,...'.") from e


def plot(dataset, split, points, anchors, output, title=None):
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  eps, acc, real = zip(*points)
  ax.plot(eps, [100 * a for a in acc], 'o-', label='dpgan_tf (this repo)')
  for e, a in zip(eps, acc):
    ax.annotate(f'{100 * a:.1f}', (e, 100 * a), textcoords='offset points',
                xytext=(0, 6), ha='center', fontsize=8)
  ax.axhline(100 * max(real), ls='--', c='gray',
             label=f'real data ({100 * max(real):.1f}%)')
  for label, values in anchors:
    ax.plot(*zip(*[(e, 100 * a) for e, a in values]), 's:', label=label)
  ax.set_xscale('log')
  ax.set_xticks(eps, [f'{e:.3g}' for e in eps])
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel('epsilon (delta = 1e-5)')
  ax.set_ylabel(f'downstream accuracy on {split} (%)')
  ax.set_title(title or f'{dataset}: classifier trained on synthetic data')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='best')
  fig.tight_layout()
  fig.savefig(output)
  plt.close(fig)


def main(argv):
  del argv
  try:
    if not FLAGS.reports or not FLAGS.output:
      raise ValueError('--reports and --output are required.')
    dataset, split, points = read_points(FLAGS.reports)
    anchors = [parse_anchor(a) for a in FLAGS.anchor]
    plot(dataset, split, points, anchors, FLAGS.output, FLAGS.title)
  except ValueError as e:
    print(f'plot_accuracy_vs_epsilon.py: error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'Wrote {FLAGS.output}: ' + ', '.join(
      f'eps {e:.3g}: {100 * a:.1f}%' for e, a, _ in points))


if __name__ == '__main__':
  app.run(main)
