#!/usr/bin/env bash
# Set-up (idempotent) and the whole test suite, one test file at a time on
# each of two workers (pytest-xdist): much of the suite is single-threaded
# Python (graph tracing, interpreter start-up), so two workers keep two
# cores busy. Pass -n 0 to run in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q --durations=15 -n 2 --dist loadfile "$@"
