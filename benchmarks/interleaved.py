"""Timing benchmark variants side by side, in one process.

Each round runs every variant's step once, after one warm-up call each, so
load from other processes on a shared machine hits all variants alike and
their ratios stay fair; the figure of a variant is its median. Plain
Python, so that the TensorFlow benchmarks and the PyTorch peer share it.
"""

import statistics
import time

METHOD = 'interleaved rounds in one process, medians'


def median_ms(steps, repeats):
  """{name: median ms of steps[name]()} over interleaved rounds.

  Args:
    steps: name -> a step, called without arguments.
    repeats: rounds, or name -> rounds (a step joins only that many).
  """
  if isinstance(repeats, int):
    repeats = {name: repeats for name in steps}
  for step in steps.values():
    step()
  times = {name: [] for name in steps}
  for round_index in range(max(repeats.values())):
    for name, step in steps.items():
      if round_index < repeats[name]:
        start = time.perf_counter()
        step()
        times[name].append(1e3 * (time.perf_counter() - start))
  return {name: statistics.median(t) for name, t in times.items()}
