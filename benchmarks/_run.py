"""Run one recipe in this process and report its results with the process's peak memory.

    python benchmarks/_run.py recipes/finetune.py --train_file ... --output_dir ...

Benchmarks start every system through this file in its own process, so peak RSS is per system.
"""

import json
import resource
import runpy
import sys
import time

recipe, args = sys.argv[1], sys.argv[2:]
sys.argv = [recipe, *args]
start = time.perf_counter()
try:
    runpy.run_path(recipe, run_name="__main__")
except SystemExit as exit_info:
    if exit_info.code not in (0, None):
        raise
output_dir = args[args.index("--output_dir") + 1]
with open(f"{output_dir}/all_results.json") as handle:
    results = json.load(handle)
results["wall_time_s"] = time.perf_counter() - start
results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("BENCH_RESULT " + json.dumps(results))
