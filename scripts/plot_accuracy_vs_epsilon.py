"""Plots downstream accuracy against epsilon from eval.py reports.

Each report is one point: x is the epsilon its run spent (`privacy.epsilon`,
from the ledger in the export), y its `metrics.accuracy_synthetic`; each
--series is a line of points (one configuration of this repo across
epsilon). The real-data ceiling (`metrics.accuracy_real`, the same
classifier trained on real examples) is drawn dashed. Published numbers can
be drawn next to them with --anchor. All reports must be of one dataset and
one eval split, or the points would not be comparable.

  python scripts/plot_accuracy_vs_epsilon.py --output=curve.png \
    --series='warm start=a.json,b.json' --series='DP-GAN=c.json' \
    --anchor='DP-GAN (DPImageBench)=1:71.8,10:70.3'

results/curves/command.txt is the command that drew the committed curve.
"""

import json
import sys

from absl import app
from absl import flags
import matplotlib

matplotlib.use('Agg')  # no display needed
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

flags.DEFINE_multi_string('series', [], "'label=a.json,b.json': eval.py "
                          'reports, one per run, drawn as one line.')
flags.DEFINE_string('output', None, 'PNG to write.')
flags.DEFINE_multi_string('anchor', [], "Published points: 'label=eps:acc%,"
                          "eps:acc%' (accuracy in percent).")
flags.DEFINE_string('title', None, 'Plot title (default: dataset and split).')
FLAGS = flags.FLAGS


def read_points(paths, kinds):
  """[(epsilon, accuracy, real accuracy)] sorted by eps; adds each
  report's (dataset, split) to kinds."""
  points = []
  for path in paths:
    try:
      with open(path) as f:
        report = json.load(f)
      kinds.add((report['dataset'], report['held_out']['split']))
      points.append((report['privacy']['epsilon'],
                     report['metrics']['accuracy_synthetic'],
                     report['metrics']['accuracy_real']))
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ValueError(f'--series: {path} is not a readable eval.py report '
                       f'({type(e).__name__}: {e}).') from e
  return sorted(points)


def read_series(texts):
  """(dataset, split, [(label, points)]) of the --series flags."""
  series, kinds = [], set()
  for text in texts:
    label, sep, paths = text.partition('=')
    if not (sep and label and paths):
      raise ValueError(f"--series={text!r}: expected 'label=a.json,b.json'.")
    series.append((label, read_points(paths.split(','), kinds)))
  if len(kinds) != 1:
    raise ValueError(f'--series mix datasets or eval splits: {sorted(kinds)}.')
  (dataset, split), = kinds
  return dataset, split, series


def parse_anchor(text):
  """'label=1:71.8,10:70.3' -> ('label', [(1.0, 0.718), (10.0, 0.703)])."""
  try:
    label, values = text.split('=', 1)
    pairs = [v.split(':') for v in values.split(',')]
    return label, [(float(e), float(a) / 100) for e, a in pairs]
  except ValueError as e:
    raise ValueError(f"--anchor={text!r}: expected 'label=eps:acc%,...'.") from e


def plot(dataset, split, series, anchors, output, title=None):
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for label, points in series:
    eps, acc, _ = zip(*points)
    ax.plot(eps, [100 * a for a in acc], 'o-', label=label)
    for e, a in zip(eps, acc):
      ax.annotate(f'{100 * a:.1f}', (e, 100 * a), textcoords='offset points',
                  xytext=(0, 6), ha='center', fontsize=8)
  real = max(p[2] for _, points in series for p in points)
  ax.axhline(100 * real, ls='--', c='gray',
             label=f'real data ({100 * real:.1f}%)')
  for label, values in anchors:
    ax.plot(*zip(*[(e, 100 * a) for e, a in values]), 's:', label=label)
  ax.set_xscale('log')
  ticks = sorted({p[0] for _, points in series for p in points})
  ax.set_xticks(ticks, [f'{e:.3g}' for e in ticks])
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
    if not FLAGS.series or not FLAGS.output:
      raise ValueError('--series and --output are required.')
    dataset, split, series = read_series(FLAGS.series)
    anchors = [parse_anchor(a) for a in FLAGS.anchor]
    plot(dataset, split, series, anchors, FLAGS.output, FLAGS.title)
  except ValueError as e:
    print(f'plot_accuracy_vs_epsilon.py: error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'Wrote {FLAGS.output}: ' + '; '.join(
      f'{label}: ' + ', '.join(f'eps {e:.3g}: {100 * a:.1f}%'
                               for e, a, _ in points)
      for label, points in series))


if __name__ == '__main__':
  app.run(main)
