"""Where a generator step's time goes, from a `train.py --profile_steps` trace.

    python train.py --flagfile=configs/dpgan/mnist_eps1.flags ... \
      --epochs=0.07 --profile_steps=4,6 --model_dir=RUN
    python benchmarks/profile_summary.py RUN --steps 3

Reads the newest `*.xplane.pb` under RUN/nonprivate/profile (TensorFlow's
profiler output, also what TensorBoard's Profile tab shows) and sums the
durations of the TensorFlow op kernels run on the host's compute threads:
by op type, and by phase (the networks' forward passes, their gradients,
and everything else: the ghost engine's per-example norms, clipping,
noise, optimizers). Op time adds up over the threads of the intra-op
pool, so it exceeds the wall time on several cores; compare shares. The
input pipeline's share is the time the step waited in `IteratorGetNext`
for its Poisson batch. The trace's timings are outside the privacy
guarantee (docs/privacy.md), hence nonprivate/. The last line is JSON.
"""

import argparse
import collections
import glob
import json
import os

from tensorflow.core.profiler.protobuf import xplane_pb2

HOST_PLANE = '/host:CPU'
COMPUTE_THREADS = 'tf_Compute'
INPUT_WAIT = 'IteratorGetNextOp::DoCompute'


def newest_trace(directory: str) -> str:
  """The newest *.xplane.pb under `directory` (for train.py, its
  --model_dir: the trace is in nonprivate/profile/plugins/profile/<time>)."""
  traces = glob.glob(os.path.join(directory, '**', '*.xplane.pb'),
                     recursive=True)
  if not traces:
    raise SystemExit(f'profile_summary.py: no *.xplane.pb under {directory}; '
                     'train with --profile_steps=START,STOP')
  return max(traces, key=os.path.getmtime)


# Phase -> how the table names it.
PHASES = {
    'critic_forward': 'critic, forward', 'critic_gradient': 'critic, gradient',
    'generator_forward': 'generator, forward',
    'generator_gradient': 'generator, gradient',
    'other': 'other: per-example norms, clipping, noise, optimizers',
}


def phase(op_name: str) -> str:
  """A key of PHASES, from the op's name scope."""
  network = next((n for n in ('critic', 'generator') if f'{n}/' in op_name),
                 None)
  if network is None:
    return 'other'
  return network + ('_gradient' if 'gradient_tape/' in op_name else '_forward')


def op_times(trace: str):
  """(ms by op type, ms by phase, ms waiting for input, names of the
  device planes) over the trace. Host op kernels only: on a GPU, their
  device kernels' time is in the device planes, not counted."""
  space = xplane_pb2.XSpace()
  with open(trace, 'rb') as f:
    space.ParseFromString(f.read())
  host = next(p for p in space.planes if p.name == HOST_PLANE)
  by_type, by_phase = collections.Counter(), collections.Counter()
  input_wait = 0.0
  for line in host.lines:
    for event in line.events:
      name = host.event_metadata[event.metadata_id].name
      ms = event.duration_ps / 1e9
      if name == INPUT_WAIT:
        input_wait += ms
      # Op kernels are named "scope/op:OpType"; runtime events use "::".
      if (line.name.startswith(COMPUTE_THREADS) and ':' in name
          and '::' not in name):
        op_name, op_type = name.rsplit(':', 1)
        by_type[op_type] += ms
        by_phase[phase(op_name)] += ms
  devices = [p.name for p in space.planes if p.name.startswith('/device:')]
  return by_type, by_phase, input_wait, devices


def summarize(trace: str, steps: int, top: int = 12) -> dict:
  """Prints the tables of a trace of `steps` generator steps; returns its
  figures (ms per step, shares)."""
  by_type, by_phase, input_wait, devices = op_times(trace)
  total = sum(by_type.values())
  print(f'{trace}: {total / steps:.0f} ms of op time per generator step')
  for title, counter, names in (('phase', by_phase, PHASES),
                                ('op type', by_type, {})):
    print(f'\n| {title} | ms per step | share |\n|---|---|---|')
    for key, ms in counter.most_common(top):
      print(f'| {names.get(key, key)} | {ms / steps:.1f} | {ms / total:.1%} |')
  print(f'\ninput pipeline wait: {input_wait / steps:.1f} ms per step')
  if devices:
    print(f'Host ops only: the time of {", ".join(devices)} is not counted '
          '(TensorBoard\'s Profile tab shows it).')
  return {
      'op_ms_per_step': round(total / steps, 1),
      'input_wait_ms_per_step': round(input_wait / steps, 2),
      **{f'share_{key}': round(by_phase[key] / total, 3) for key in PHASES},
      **{f'share_op_{key}': round(ms / total, 3)
         for key, ms in by_type.most_common(5)},
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('run_dir', help="train.py's --model_dir, or any "
                      'directory holding a trace')
  parser.add_argument('--steps', type=int, required=True,
                      help='generator steps traced (STOP - START + 1)')
  parser.add_argument('--top', type=int, default=12)
  args = parser.parse_args()
  print(json.dumps(summarize(newest_trace(args.run_dir), args.steps,
                             args.top)))


if __name__ == '__main__':
  main()
