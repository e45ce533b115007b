"""Run a recipe in this process until its first training steps; report how long its data took and its memory.

    python benchmarks/_first_step.py 5 recipes/finetune.py --train_file ... --output_dir ...

Prints `BENCH_RESULT {...}` and exits right after optimizer step 5 (nothing is saved): `prep_s` (the recipe's
`load_splits` + `encode_splits`: reading, checking and tokenizing), `first_step_s` (process start to the first
optimizer step), the peak RSS when the data was ready and at the last step, the peak of any worker process
(`Dataset.map(num_proc=...)`), and the files whose mapped pages are resident at the last step, in MiB. RSS counts
the pages of memory-mapped Arrow files the process has read (file-backed: the kernel drops them under memory
pressure, and they are shared with the page cache); a thread samples /proc/self/status every 0.1 s for the peaks
of its two parts, `RssAnon` (the process's own memory) and `RssFile`. Works with any version of the package on
`PYTHONPATH` (the benchmark compares the data path before and after Arrow), as it only wraps `nlptransfer.data`
and hooks torch's optimizers.
"""

import json
import os
import resource
import runpy
import sys
import threading
import time

START = time.perf_counter()
steps, recipe, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
sys.argv = [recipe, *args]

from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

import nlptransfer.data as data  # noqa: E402

result = {"load_s": 0.0, "encode_s": 0.0, "steps": steps, "peak_rss_anon_mib": 0.0, "peak_rss_file_mib": 0.0}


def sample_rss() -> None:
    while True:
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status if line.startswith("Rss"))
        for name, key in (("RssAnon", "peak_rss_anon_mib"), ("RssFile", "peak_rss_file_mib")):
            result[key] = max(result[key], int(fields[name].split()[0]) / 1024)
        time.sleep(0.1)


threading.Thread(target=sample_rss, daemon=True).start()


def mapped_files_mib() -> dict[str, float]:
    """Each memory-mapped file's resident pages now (/proc/self/smaps), in MiB, most first: which Arrow cache
    files (or libraries, or weights) the file-backed part of RSS is made of."""
    resident, current = {}, None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            name, _, rest = line.partition(":")
            if not name.isalpha() or name[0].islower():  # a mapping's header line: address range ... [path]
                parts = line.split()
                current = parts[5] if len(parts) > 5 and parts[5].startswith("/") else None
            elif name == "Rss" and current:
                resident[current] = resident.get(current, 0) + int(rest.split()[0]) / 1024
    return dict(sorted(resident.items(), key=lambda item: -item[1]))


def peak_mib(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def timed(name, function):
    def wrapper(*a, **k):
        start = time.perf_counter()
        out = function(*a, **k)
        result[f"{name}_s"] += time.perf_counter() - start
        result["peak_rss_prep_mib"] = peak_mib()
        return out

    return wrapper


data.load_splits = timed("load", data.load_splits)
data.encode_splits = timed("encode", data.encode_splits)
taken = 0


def after_step(optimizer, *_):
    global taken
    taken += 1
    if taken == 1:
        result["first_step_s"] = time.perf_counter() - START
    if taken == steps:
        result["prep_s"] = result["load_s"] + result["encode_s"]
        result["last_step_s"] = time.perf_counter() - START
        result["peak_rss_mib"] = peak_mib()
        result["children_peak_rss_mib"] = peak_mib(resource.RUSAGE_CHILDREN)
        mapped = mapped_files_mib()
        result["mapped_files_mib"] = dict(list(mapped.items())[:5])
        result["arrow_resident_mib"] = sum(mib for path, mib in mapped.items() if path.endswith(".arrow"))
        print("BENCH_RESULT " + json.dumps(result), flush=True)
        os._exit(0)


register_optimizer_step_post_hook(after_step)
runpy.run_path(recipe, run_name="__main__")
sys.exit(f"the run ended before optimizer step {steps}")
