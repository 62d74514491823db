"""Peak memory of a benchmark variant: the high-water mark of a fresh process.

The parent reruns its own script with `--peak_memory_of VARIANT...`; the
child builds and runs that variant alone, then prints its own peak resident
set size, VmHWM of /proc/self/status (the kernel's high-water mark of the
process's memory map), as its last line. A fresh process per variant,
because the peak of a process never goes down: measured in one process,
every variant after the largest would report the largest. Not
ru_maxrss: Linux carries the parent's peak into a child's ru_maxrss across
fork and exec (every variant then read as the parent's 1588 MB), while the
map whose VmHWM is read is created new by exec. It is the whole
process's peak (Python, the TensorFlow runtime, the traced graphs, weights
and the step's buffers), so compare variants with one another, not with
the size of one tensor. Allocator caching cannot hide it: reused memory
still counts once, at its peak.
"""

import json
import subprocess
import sys

METHOD = 'peak RSS (VmHWM) of a fresh subprocess per variant'
FLAG = '--peak_memory_of'


def status_mb(field: str) -> float:
  """A memory figure of this process from /proc/self/status (VmHWM: its
  peak RSS; RssAnon, RssFile: heap and file-backed resident memory now),
  in MB (2^20 bytes)."""
  with open('/proc/self/status') as f:
    kib = next(int(line.split()[1]) for line in f
               if line.startswith(field + ':'))
  return kib / 1024


def report_child_peak() -> None:
  """In the child: prints this process's peak RSS in MB as one JSON line."""
  print(json.dumps({'peak_rss_mb': round(status_mb('VmHWM'), 1)}),
        flush=True)


def peak_rss_mb(script: str, variant_args) -> float:
  """Runs `script --peak_memory_of *variant_args` in a fresh interpreter and
  returns the peak RSS it reports, in MB."""
  done = subprocess.run(
      [sys.executable, script, FLAG, *map(str, variant_args)],
      check=True, capture_output=True, text=True)
  return json.loads(done.stdout.strip().splitlines()[-1])['peak_rss_mb']
