"""Run one recipe in this process and report its results with the process's peak memory.

    python benchmarks/_run.py recipes/finetune.py --train_file ... --output_dir ...

Benchmarks start every system through this file in its own process, so peak RSS is per system.
With NLPTRANSFER_RSS_TRACE=<file>, the resident memory is also written there every 0.2 s (seconds
since start, MiB), to see which phase of a run sets its peak.
"""

import json
import os
import resource
import runpy
import sys
import threading
import time

from _common import status_mib


def trace_rss(path: str, start: float) -> None:
    with open(path, "w") as out:
        while True:
            out.write(f"{time.perf_counter() - start:.1f} {status_mib('VmRSS'):.0f}\n")
            out.flush()
            time.sleep(0.2)


recipe, args = sys.argv[1], sys.argv[2:]
sys.argv = [recipe, *args]
start = time.perf_counter()
if trace := os.environ.get("NLPTRANSFER_RSS_TRACE"):
    threading.Thread(target=trace_rss, args=(trace, start), daemon=True).start()
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
