#!/usr/bin/env bash
# The GPU check of issue #24 (benchmarks/gpu_check.py): fine-tuning in bf16, FSDP and ZeRO-3 at world size 1 with
# reload checks, LoRA merge, multi-task, tokens/s against the transformers Trainer; under 8 minutes on one H100.
#   scripts/gpu_check.sh               # one GPU -> benchmarks/results/gpu_check.json
#   scripts/gpu_check.sh --dry_run     # a CPU, tiny model and data -> benchmarks/results/gpu_check_dry.json
# Data: $NLPTRANSFER_DATA (default ../shared/data). Virtualenv: $VENV if set, else .venv if there, else the active one.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
if [[ -f "$venv/bin/activate" ]]; then
  # shellcheck disable=SC1091
  source "$venv/bin/activate"
fi
exec python benchmarks/gpu_check.py "$@"
