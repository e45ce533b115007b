"""Render benchmarks/README.md from benchmarks/results/*.json, and from nothing else.

    python benchmarks/report.py            # rewrite benchmarks/README.md
    python benchmarks/report.py --check    # exit 1 when benchmarks/README.md is not what the JSONs render to

Every table is rendered from the values of one or more results JSONs and shown with the command that wrote
each JSON (its `command` field), grouped by benchmark; `--quick` smoke runs come last. A JSON of a benchmark
this file does not know is listed with its command, so nothing is left out silently. To change what the page
says, change a renderer here (numbers only ever come from the JSONs); tests/test_report.py fails while the
committed README.md differs from a fresh render.
"""

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from _common import RESULTS, markdown_table

README = RESULTS.parent / "README.md"
TASK_NAMES = {"trec": "TREC-6", "conll2003": "CoNLL-2003", "conll": "CoNLL-2003", "sst2": "SST-2", "rte": "RTE"}
METRIC_NAMES = {"accuracy": "accuracy", "f1": "entity F1"}


# ---- formatting ------------------------------------------------------------------------------------------------


def num(value, spec: str, suffix: str = "") -> str:
    """`value` formatted with `spec`, or "-" when the JSON has no such value."""
    return "-" if value is None else f"{value:{spec}}{suffix}"


def spread(mean, std, spec: str, runs: int) -> str:
    """`mean ± std` over several runs, the mean alone for one."""
    if mean is None:
        return "-"
    return f"{mean:{spec}}" + (f" ± {std:{spec.lstrip('+')}}" if runs > 1 and std is not None else "")


def task_name(task: str) -> str:
    return TASK_NAMES.get(task, task)


def seed_list(seeds: list) -> str:
    """42-46 for a run of consecutive seeds, else the seeds listed."""
    seeds = [s for s in seeds if s is not None]
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(str(s) for s in seeds) or "-"


def settings_line(settings: dict, keys: list[str]) -> str:
    """`key` value pairs of the settings a JSON records (those present and set)."""
    parts = [f"`{key}` {settings[key]}" for key in keys if settings.get(key) is not None]
    return "Settings: " + ", ".join(parts) + "." if parts else ""


def targets_list(targets: dict) -> str:
    """A benchmark's targets as a list: met / not met (per task where the JSON has one flag per task)."""

    def said(flag) -> str:
        if isinstance(flag, dict):
            return ", ".join(f"{task_name(k)} {said(v)}" for k, v in flag.items()) or "-"
        return "met" if flag else "**not met**"

    return "\n".join(f"- {name}: {said(flag)}" for name, flag in targets.items())


def gflops(value: float) -> str:
    return f"{value / 1e9:.0f}"


# ---- one renderer per kind of results JSON: (file name, its contents) -> markdown ----------------------------


def render_finetune(name: str, data: dict) -> str:
    metrics = {row["task"]: row["metric"] for row in data["rows"]}
    header = ["task", "system", "seeds", "test score (mean ± std)", "train time (s)", "time vs anchor"]
    header += ["score Δ vs it (points)", "peak RSS vs it", "time vs examples Trainer", "train samples/s"]
    header += ["real tokens/s", "peak RSS (MiB)", "MFU"]
    table = []
    for s in data["summary"]:
        runs = len(s["seeds"])
        metric = metrics.get(s["task"], "score")
        # results from before the best-tuned anchor (issue #27) have ratios against the fp32 tuned Trainer only
        anchor = s.get("anchor") or "Trainer (tuned)"
        versus = "best-tuned Trainer" if s.get("anchor") else anchor
        table.append(
            [task_name(s["task"]), s["system"], seed_list(s["seeds"])]
            + [f"{METRIC_NAMES.get(metric, metric)} {spread(s['score'], s['score_std'], '.4f', runs)}"]
            + [spread(s["train_runtime_s"], s["train_runtime_s_std"], ".0f", runs)]
            + [num(s.get(f"time_vs {versus}"), ".2f", f"x ({anchor})")]
            + [num(s.get(f"score_delta_points_vs {versus}"), "+.2f")]
            + [num(s.get(f"memory_vs {versus}"), ".2f", "x")]
            + [num(s.get("time_vs Trainer (examples)"), ".2f", "x")]
            + [num(s["samples_per_second"], ".1f"), num(s["real_tokens_per_second"], ".0f")]
            + [num(s["peak_rss_mib"], ".0f"), f"{100 * s['mfu']:.1f}% ({s['precision']})"]
        )
    peaks = {}
    for row in data["rows"]:
        peaks.setdefault(row["precision"], set()).add(row["peak_flops"])
    measured = "; ".join(
        f"{precision} {gflops(min(values))}" + (f"-{gflops(max(values))}" if len(values) > 1 else "")
        for precision, values in sorted(peaks.items())
    )
    parts = [
        markdown_table(header, table),
        "The anchor is the best-tuned Trainer: per task, the faster of `Trainer (tuned)` (fp32) and `Trainer (tuned, "
        "bf16)` that ran (results from before both ran compare with `Trainer (tuned)` alone). MFU is against the "
        f"matmul peak measured in the invocation that ran each row (GFLOP/s: {measured}).",
    ]
    parts += [f"Not run: {system}: {why}." for system, why in data.get("skipped", {}).items()]
    plot = RESULTS / Path(name).with_suffix(".png").name
    if plot.is_file():
        parts.append(f"![test score vs training time](results/{plot.name})")
    return "\n\n".join(parts)


def render_trainer(name: str, data: dict) -> str:
    config, test = data["config"], data["test_metrics"]
    if "f1" in test:
        score = f"entity F1 {test['f1']:.4f} (P {test['precision']:.4f}, R {test['recall']:.4f})"
    else:
        score = f"accuracy {test['accuracy']:.4f} (macro-F1 {num(test.get('macro_f1'), '.4f')})"
    validation = [entry["eval_f1"] for entry in data.get("validation_history", []) if "eval_f1" in entry]
    header = ["task", "padding", "test score", "best validation F1", "train time (s)", "train samples/s"]
    row = [task_name(data["task"]), config["padding"] + (", grouped" if config.get("group_by_length") else "")]
    row += [score, num(max(validation) if validation else None, ".4f"), num(data["train_runtime"], ".0f")]
    row += [num(data["train_samples_per_second"], ".1f")]
    table = markdown_table([*header, "peak RSS (MiB)"], [[*row, num(data["peak_rss_mib"], ".0f")]])
    keys = ["model_name_or_path", "epochs", "batch_size", "learning_rate", "seed", "max_seq_length", "bf16"]
    versions = ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items())
    return "\n\n".join([table, settings_line(config, keys) + f" Device: {data.get('device', '-')}; {versions}."])


def render_step(name: str, data: dict) -> str:
    tasks = list(dict.fromkeys(row["task"] for row in data["rows"]))
    by = {(row["task"], row["setting"]): row for row in data["rows"]}
    header = ["setting"] + [f"{task_name(t)} {c}" for t in tasks for c in ("ms/step", "real tokens/s", "MFU")]
    table = []
    for setting in dict.fromkeys(row["setting"] for row in data["rows"]):
        cells = [setting]
        for task in tasks:
            row = by.get((task, setting))
            if row is None:
                cells += ["-", "-", "-"]
                continue
            cells += [f"{row['ms_per_step']:.0f}", f"{row['real_tokens_per_second']:.0f}"]
            cells += [f"{100 * row['mfu']:.1f}% ({row['precision']})"]
        table.append(cells)
    peak = data["peak_flops"]
    note = f"Matmul peak measured in the same run: fp32 {gflops(peak['fp32'])}, bf16 {gflops(peak['bf16'])} GFLOP/s"
    return "\n\n".join([markdown_table(header, table), note + f" on {data['threads']} threads."])


def render_step_profile(name: str, data: dict) -> str:
    rows, peak = data["rows"], data["peak_flops"]
    header = ["kind of operator"] + [f"{task_name(r['task'])} {r['setting']} ({r['precision']})" for r in rows]
    kinds = list(dict.fromkeys(kind for r in rows for kind in r["share"]))
    table = [["ms/step (MFU)"] + [f"{r['ms_per_step']:.0f} ({100 * r['mfu']:.1f}%)" for r in rows]]
    for kind in kinds:
        table.append(
            [kind]
            + [
                f"{r['ms_per_step_by_kind'][kind]:.1f} ms ({100 * r['share'][kind]:.0f}%)"
                if kind in r["share"]
                else "-"
                for r in rows
            ]
        )

    def flops(value, precision) -> str:
        return "-" if value is None else f"{gflops(value)} G ({100 * value / peak[precision]:.0f}% of peak)"

    table.append(
        ["matmul FLOP/s inside the step"] + [flops(r["matmul_flops_per_second_in_step"], r["precision"]) for r in rows]
    )
    table.append(
        ["the encoder's matmul shapes timed alone"]
        + [flops(r["encoder_matmul_shapes_flops_per_second_alone"], r["precision"]) for r in rows]
    )
    table.append(["padded tokens per batch"] + [str(r["padded_tokens_per_batch"]) for r in rows])
    table.append(["RSS before the steps (MiB)"] + [num(r.get("rss_mib_before_steps"), ".0f") for r in rows])
    table.append(["peak RSS during the steps (MiB)"] + [num(r.get("peak_rss_mib_during_steps"), ".0f") for r in rows])
    note = f"Matmul peak measured in the same run: fp32 {gflops(peak['fp32'])}, bf16 {gflops(peak['bf16'])} GFLOP/s"
    return "\n\n".join([markdown_table(header, table), note + f" on {data['threads']} threads."])


def render_lora(name: str, data: dict) -> str:
    header = ["task", "system", "seeds", "test score (mean ± std)", "Δ vs full (points, paired by seed)"]
    header += ["trainable", "saved weights", "train time (s)", "peak RSS (MiB)"]
    if "summary" not in data:  # results from before 3 seeds (issue #27): one row per system
        data = {**data, "summary": [{**r, "seeds": [None]} for r in data["rows"]]}
    table = []
    for s in data["summary"]:
        runs = len(s["seeds"])
        metric = METRIC_NAMES.get(s["metric"], s["metric"])
        table.append(
            [task_name(s["task"]), s["system"], seed_list(s["seeds"])]
            + [f"{metric} {spread(s['score'], s.get('score_std'), '.4f', runs)}"]
            + [spread(s.get("delta_vs_full_points"), s.get("delta_vs_full_points_std"), "+.2f", runs)]
            + [f"{s['trainable_parameters']:,} ({s['trainable_percent']:.2f}%)", f"{s['saved_weights_mib']:.1f} MiB"]
            + [spread(s["train_runtime_s"], s.get("train_runtime_s_std"), ".0f", runs)]
            + [spread(s["peak_rss_mib"], s.get("peak_rss_mib_std"), ".0f", runs)]
        )
    flags = {(r["task"], r["system"]): " ".join(a for a in r.get("args", []) if a) for r in data["rows"]}
    epochs = f" Epochs: {data['epochs']:g} for both." if data.get("epochs") else ""
    lines = "; ".join(f"{system}: `{f}`" for (task, system), f in flags.items() if task == data["summary"][0]["task"])
    return markdown_table(header, table) + f"\n\nRecipe flags ({lines}).{epochs}"


def mtl_seeds(data: dict) -> list:
    return data.get("seeds") or [data.get("seed")]


def mtl_setting(data: dict) -> str:
    """What a multi-task JSON's run changed, from its config and flags."""
    config, parts = data["config"], []
    for key, label in (("weight", "loss weight"), ("private_layers", "private_layers")):
        parts += [f"{task_name(t['name'])} {label} {t[key]:g}" for t in config["tasks"] if t.get(key) is not None]
    born_again = data.get("born_again")
    if born_again is True or born_again == []:
        parts.append("single-task teachers for every task")
    elif born_again:
        parts.append("single-task teachers for " + ", ".join(task_name(t) for t in born_again))
    if data.get("recipe_args"):
        parts.append(f"`{data['recipe_args']}`")
    return "; ".join(parts) or "every task at loss weight 1"


def mtl_average(data: dict) -> tuple[float, float | None, list[float]]:
    """The average Δ over tasks in points, its standard error over seeds, and the per-seed averages."""
    rows, summary = data["rows"], data["summary"]
    per_seed = summary.get("average_delta_per_seed_points")
    if per_seed is None and all("multi_task_scores" in r for r in rows):
        per_seed = [
            statistics.mean(100 * (r["multi_task_scores"][i] - r["single_task_scores"][i]) for r in rows)
            for i in range(len(rows[0]["multi_task_scores"]))
        ]
    average = summary.get("average_delta_points")
    if average is None:
        average = statistics.mean(r["delta_points"] for r in rows)
    stderr = summary.get("average_delta_stderr_points")
    if stderr is None and per_seed and len(per_seed) > 1:
        stderr = statistics.stdev(per_seed) / len(per_seed) ** 0.5
    return average, stderr, per_seed or []


def render_mtl(name: str, data: dict) -> str:
    rows, summary, seeds = data["rows"], data["summary"], mtl_seeds(data)
    runs = len(seeds)
    born_again = data.get("born_again") is not None
    header = ["task", "metric", "multi-task" + (" (born-again)" if born_again else "")]
    header += ["plain multi-task"] if born_again else []
    header += ["single-task (same updates)", "Δ test (points)", "Δ validation", "updates (multi / single)"]
    table = []
    for r in rows:
        cells = [task_name(r["task"]), METRIC_NAMES.get(r["metric"], r["metric"]), f"{r['multi_task']:.4f}"]
        cells += [num(r.get("plain_multi_task"), ".4f")] if born_again else []
        cells += [f"{r['single_task']:.4f}", spread(r["delta_points"], r.get("delta_std_points"), "+.2f", runs)]
        cells += [num(r.get("validation_delta_points"), "+.2f")]
        table.append([*cells, f"{r['multi_task_updates']:.0f} / {r['single_task_updates']:.0f}"])
    average, stderr, per_seed = mtl_average(data)
    cells = ["**average**", "", f"{summary['multi_task_average']:.4f}"] + ([""] if born_again else [])
    cells += [f"{summary['single_task_average']:.4f}", spread(average, stderr, "+.2f", runs)]
    table.append([*cells, num(summary.get("validation_average_delta_points"), "+.2f"), ""])
    parts = [
        f"Setting: {mtl_setting(data)}; seeds {seed_list(seeds)}; model `{data['config']['model_name_or_path']}`. "
        "Δ: mean ± std of the per-seed difference; the average's ± is its standard error over seeds.",
        markdown_table(header, table),
    ]
    if len(per_seed) > 1:
        parts.append("Average Δ test per seed (points): " + ", ".join(f"{x:+.2f}" for x in per_seed) + ".")
    rounds = summary.get("serving_round_speedups")
    median = f" (median of {len(rounds)} paired rounds)" if rounds and len(rounds) > 1 else ""
    costs = [
        ["parameters", f"{summary['multi_task_parameters']:,}", f"{summary['single_task_parameters']:,}"]
        + [f"{summary['parameter_ratio']:.2f}x"],
        [f"training time (seed {seeds[0]}, s)", f"{summary['multi_task_train_s']:.0f}"]
        + [
            f"{summary['single_task_train_s']:.0f}",
            f"{summary['multi_task_train_s'] / summary['single_task_train_s']:.2f}x",
        ],
        [f"serving, texts/s ({summary['serving_texts']} texts)", f"{summary['multi_task_texts_per_s']:.1f}"]
        + [f"{summary['single_task_models_texts_per_s']:.1f}", f"{summary['serving_speedup']:.2f}x{median}"],
    ]
    parts.append(markdown_table(["", "multi-task (1 model)", f"single-task ({len(rows)} models)", "ratio"], costs))
    if summary.get("targets"):
        parts.append("Targets:\n" + targets_list(summary["targets"]))
    return "\n\n".join(parts)


def render_mtl_settings(files: list[tuple[str, dict]]) -> str:
    """One row per multi-task JSON: the per-task and average Δs, parameters and serving, side by side."""
    tasks = list(dict.fromkeys(r["task"] for _, data in files for r in data["rows"]))
    header = ["JSON", "setting", "seeds"] + [f"{task_name(t)} Δ" for t in tasks]
    header += ["average Δ test", "average Δ validation", "parameters", "serving"]
    table, model = [], files[0][1]["config"]["model_name_or_path"]
    for name, data in files:
        by_task = {r["task"]: r for r in data["rows"]}
        setting = mtl_setting(data)
        if data["config"]["model_name_or_path"] != model:
            setting += f"; model `{data['config']['model_name_or_path']}`"
        average, stderr, _ = mtl_average(data)
        summary, seeds = data["summary"], mtl_seeds(data)
        table.append(
            [f"`{name}`", setting, seed_list(seeds)]
            + [num(by_task[t]["delta_points"] if t in by_task else None, "+.2f") for t in tasks]
            + [spread(average, stderr, "+.2f", len(seeds)), num(summary.get("validation_average_delta_points"), "+.2f")]
            + [f"{summary['parameter_ratio']:.2f}x", f"{summary['serving_speedup']:.2f}x"]
        )
    return markdown_table(header, table)


def render_distill(name: str, data: dict) -> str:
    entries = data.get("summary") or [{**row, "scores": [row["score"]], "score_std": 0.0} for row in data["rows"]]
    header = ["task", "model", "layers", "init", "test score", "% of teacher", "Δ vs labels only (points)"]
    header += ["parameters", "examples/s", "speed-up vs teacher"]
    table = []
    for e in entries:
        runs = len(e["scores"])
        score = f"{METRIC_NAMES.get(e['metric'], e['metric'])} {spread(e['score'], e['score_std'], '.4f', runs)}"
        if runs > 1:
            score += " (" + ", ".join(f"{s:.4f}" for s in e["scores"]) + ")"
        if e.get("transfer_rows"):
            score += f"; {e['transfer_rows']:,} transfer rows"
        table.append(
            [
                task_name(e["task"]),
                e["model"],
                e["layers"],
                e["init"],
                score,
                num(e.get("retained_percent"), ".1f", "%"),
            ]
            + [spread(e.get("delta_vs_labels_only_points"), e.get("delta_std_points"), "+.2f", runs)]
            + [num(e.get("parameters"), ".1f") if e.get("parameters") is None else f"{e['parameters'] / 1e6:.1f}M"]
            + [num(e.get("examples_per_second"), ".0f"), num(e.get("speedup_vs_teacher"), ".2f", "x")]
        )
    parts = [markdown_table(header, table)]
    seeds = sorted({s for e in entries for s in e.get("seeds", []) if s is not None})
    if len(seeds) > 1:
        parts.append(
            f"Cut students over seeds {seed_list(seeds)}: mean ± std, per seed in parentheses; Δ paired by seed."
        )
    if data.get("targets"):
        parts.append("Targets:\n" + targets_list(data["targets"]))
    return "\n\n".join(parts)


def render_distill_fair(name: str, data: dict) -> str:
    search = [
        [f"{r['learning_rate']:g}", f"{r['epochs']:g}", f"{r['validation_f1']:.4f}", f"{r['test_f1']:.4f}"]
        for r in data["search"]
    ]
    header = ["system", "seeds", "test entity F1 (mean ± std)", "validation F1", "gain over tuned labels only"]
    table = [
        [s["system"], seed_list(s["seeds"]), spread(s["test_f1"], s["test_f1_std"], ".4f", len(s["seeds"]))]
        + [f"{s['validation_f1']:.4f}", spread(s.get("gain_points"), s.get("gain_std_points"), "+.2f", len(s["seeds"]))]
        for s in data["summary"]
    ]
    return "\n\n".join(
        [
            f"Teacher (MiniLM, 6 layers): test entity F1 {data['teacher']['test_f1']:.4f}. Labels-only search, "
            f"seed {data['rows'][0]['seed']} (chosen: {data['chosen']}):",
            markdown_table(["learning rate", "epochs", "validation F1", "test F1 (not used to choose)"], search),
            markdown_table(header, table),
            "The labels-only student cannot use unlabelled text; the transfer-set row shows what it adds.",
        ]
    )


def render_transferability(name: str, data: dict) -> str:
    header = ["task", "candidate", "LogME", "H-score", "scoring time (s)", "fine-tuned test score"]
    table = [
        [task_name(r["task"]), f"`{r['candidate']}`", f"{r['logme']:.4f}", f"{r['hscore']:.3f}"]
        + [f"{r['score_seconds']:.1f}", f"{METRIC_NAMES.get(r['metric'], r['metric'])} {r['fine_tuned_test']:.4f}"]
        + [f"{r['fine_tune_seconds']:.0f}"]
        for r in data["rows"]
    ]
    correlations = [
        [task_name(c["task"]), c["candidates"], f"{c['kendall_tau_b_logme']:+.2f}", f"{c['kendall_tau_b_hscore']:+.2f}"]
        for c in data["correlations"]
    ]
    keys = ["score_examples", "max_train_samples", "max_test_samples", "epochs", "learning_rate", "seed", "cpu_threads"]
    parts = [
        settings_line(data["settings"], keys),
        markdown_table([*header, "fine-tuning time (s)"], table),
        markdown_table(["task", "candidates", "Kendall τ_b, LogME", "Kendall τ_b, H-score"], correlations),
    ]
    parts += [f"Skipped `{s['candidate']}`: {s['reason']}" for s in data.get("skipped", [])]
    return "\n\n".join(parts)


def render_domain(name: str, data: dict) -> str:
    directions = list(dict.fromkeys(s["direction"] for s in data["summary"]))
    by = {(s["direction"], s["method"]): s for s in data["summary"]}
    average = data.get("average", {})
    header = ["method", *(d.replace(" -> ", " → ") for d in directions), "average", "vs source-only (points)"]
    table = []
    for method in dict.fromkeys(s["method"] for s in data["summary"]):
        cells = [method]
        for direction in directions:
            s = by.get((direction, method))
            if s is None:
                cells.append("-")
                continue
            cell = spread(s["mean"], s["std"], ".4f", len(s["scores"]))
            if len(s["scores"]) > 1:
                cell += " (" + ", ".join(f"{x:.4f}" for x in s["scores"]) + ")"
            cells.append(cell)
        value, base = average.get(method), average.get("source_only")
        delta = None if value is None or base is None or method == "source_only" else 100 * (value - base)
        table.append([*cells, num(value, ".4f"), num(delta, "+.2f")])
    chosen = [r["chosen"] for r in data["rows"] if r.get("chosen")]
    parts = [
        f"Seeds {seed_list(data.get('seeds', []))}; recipe flags `{' '.join(data.get('args', []))}`.",
        markdown_table(header, table),
    ]
    choice = data.get("label_free_choice", {"criterion": "dev_risk"})  # results from before #27: DEV risk
    if chosen:
        counts = ", ".join(f"`{m}` {chosen.count(m)} of {len(chosen)}" for m in dict.fromkeys(chosen))
        parts.append(f"Lowest `{choice['criterion']}` per direction and seed (no target label): {counts}.")
    if choice.get("mean_rank"):
        ranks = ", ".join(f"`{m}` {r:.2f}" for m, r in sorted(choice["mean_rank"].items(), key=lambda i: i[1]))
        parts.append(
            f"Mean rank by `{choice['criterion']}` over directions and seeds (1 = best): {ranks}. The label-free "
            f"choice is **`{choice['best']}`**; the recipe's defaults when this ran: `{choice['shipped_now']}`."
        )
    diagnosed = [r for r in data["rows"] if r.get("dev_ess") is not None and not r.get("chosen")]
    if diagnosed:  # how much each DEV figure rests on (rows from before the flattening lack these)
        cells = []
        for method in dict.fromkeys(r["method"] for r in diagnosed):
            own = [r for r in diagnosed if r["method"] == method]
            ess, power = (statistics.mean(r[k] for r in own) for k in ("dev_ess", "dev_power"))
            cells.append(f"`{method}` {100 * ess:.1f}% / {power:.2f}")
        parts.append(
            "DEV's raw weights, mean effective sample size (share of the validation texts) / flattening power "
            "that keeps it at 25% (1: none, 0: plain source validation): " + ", ".join(cells) + "."
        )
    kinds = {}
    for row in data["rows"]:
        if row.get("machine") and not row.get("chosen"):
            kind = ", ".join(row["machine"].get("cpu_flags") or ["no AVX flags"])
            kinds[kind] = kinds.get(kind, 0) + 1
    if len(kinds) > 1:
        parts.append(
            "Rows ran on CPUs of more than one kind: " + "; ".join(f"{k}: {n}" for k, n in kinds.items()) + "."
        )
    if data.get("paired"):
        table = [
            [f"{c['method']} − {c['baseline']}", c["pairs"], f"{c['mean_points']:+.2f} ± {c['std_points']:.2f}"]
            + [f"{c['wins']} / {c['losses']}"]
            for c in data["paired"]
        ]
        header = ["paired by direction and seed", "pairs", "target accuracy Δ (points, mean ± std)", "wins / losses"]
        parts.append(markdown_table(header, table))
    return "\n\n".join(parts)


def render_fewshot(name: str, data: dict) -> str:
    if data.get("protocol") != "meta-validation":
        return render_fewshot_fixed_budget(name, data)
    settings, split = data["settings"], data["class_split"]
    keys = ["episodes", "val_episodes", "n_way", "query", "finetune_steps", "finetune_lrs", "meta_steps"]
    keys += ["meta_batch_size", "inner_steps", "inner_lrs", "meta_k_shot", "multitask_epochs", "multitask_steps"]
    groups = ", ".join(f"{len(split[g])} {g.replace('_', '-')}" for g in ("meta_train", "meta_val", "meta_test"))
    parts = [settings_line(settings, [*keys, "seed", "meta_seeds"]) + f" Fine classes: {groups}."]
    header = ["start", "seed", "shots", "adaptation chosen on meta-validation", "meta-val accuracy (%)"]
    header += ["meta-test accuracy ± 95% CI (%)", "meta-test, prototype (%)"]
    table = [
        [r["start"].split(" seed ")[0], r["seed"] if r["seed"] is not None else "-", r["shot"], r["adaptation"]]
        + [f"{100 * r['val_accuracy']:.1f}", f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f}"]
        + [f"{100 * r['prototype_accuracy']:.1f} ± {100 * r['prototype_ci95']:.1f}"]
        for r in data["rows"]
    ]
    parts.append(markdown_table(header, table))
    candidates = [s for s in data["starts"] if s.get("algorithm") and s.get("seed") == settings["seed"]]
    if candidates:
        shot = str(max(settings["shots"]))
        lines = [
            f"- meta-{s['algorithm']}, inner_lr {s['inner_lr']:g}: {100 * s['val_accuracy'][shot]:.1f}%"
            + (" (chosen)" if data["choice"][s["algorithm"]]["inner_lr"] == s["inner_lr"] else "")
            for s in candidates
        ]
        parts.append(
            f"Meta-training settings on {shot}-shot meta-validation (seed {settings['seed']}):\n" + "\n".join(lines)
        )
    paired = [
        [c["start"], c["against"], f"{c['shot']}-shot", f"{c['mean_over_seeds_points']:+.1f}"]
        + ["; ".join(f"{p['seed']}: {p['diff_points']:+.1f} ± {p['ci95_points']:.1f}" for p in c["per_seed"])]
        for c in data["paired"]
    ]
    header = ["start", "against", "shots", "mean over seeds (points)", "per seed (points ± 95% CI, same episodes)"]
    parts.append(markdown_table(header, paired))
    if data.get("targets"):
        parts.append("Targets:\n" + targets_list(data["targets"]))
    return "\n\n".join(parts)


def render_fewshot_fixed_budget(name: str, data: dict) -> str:
    """Results from before meta-validation (issue #27): one fine-tuning budget for every start."""
    shots = data["settings"]["shots"]
    by = {(r["start"], r["shot"]): r for r in data["rows"]}
    header = ["start", *(f"{k}-shot {m}" for k in shots for m in ("fine-tuned", "prototype"))]
    table = []
    for start in data["starts"]:
        cells = [start["start"]]
        for k in shots:
            r = by.get((start["start"], k))
            for m in ("finetuned", "prototype"):
                cells.append("-" if r is None else f"{100 * r[f'{m}_accuracy']:.1f} ± {100 * r[f'{m}_ci95']:.1f}")
        table.append(cells)
    paired = [
        [p["a"], p["b"], f"{p['shot']}-shot", p["method"], f"{p['diff_points']:+.1f} ± {p['ci95_points']:.1f}"]
        for p in data["paired"]
    ]
    keys = ["episodes", "n_way", "query", "finetune_steps", "finetune_lr", "meta_steps", "meta_batch_size"]
    keys += ["inner_steps", "inner_lr", "meta_k_shot", "multitask_epochs", "multitask_steps", "seed", "cpu_threads"]
    split = data.get("class_split", {})
    classes = (
        f" Fine classes: {len(split.get('meta_train', []))} meta-train, {len(split.get('meta_test', []))} meta-test."
    )
    parts = [
        settings_line(data["settings"], keys) + classes,
        "Mean query accuracy ± 95% CI (%):",
        markdown_table(header, table),
        "Paired differences on the same episodes (points ± 95% CI):",
        markdown_table(["start", "against", "shots", "scored", "difference"], paired),
    ]
    if data.get("targets"):
        parts.append("Targets:\n" + targets_list(data["targets"]))
    return "\n\n".join(parts)


def render_fusion(name: str, data: dict) -> str:
    targets = list(dict.fromkeys(s["target"] for s in data["summary"]))
    by = {(s["target"], s["system"]): s for s in data["summary"]}
    trainable = {(r["target"], r["system"]): r.get("trainable_parameters") for r in data["rows"]}
    header = ["system"] + [c for t in targets for c in (t, "Δ (points)")] + ["trained parameters"]
    table = []
    for system in dict.fromkeys(s["system"] for s in data["summary"]):
        cells = [system]
        for target in targets:
            s = by.get((target, system))
            if s is None:
                cells += ["(left out)", ""]
                continue
            delta = "" if s["system"] == "head only (no source)" else num(s.get("delta_points"), "+.1f")
            if s.get("negative_transfer_beyond_noise"):
                delta = f"**{delta}**"
            cells += [spread(s["accuracy"], s["std"], ".3f", len(s["scores"])), delta]
        counts = dict.fromkeys(trainable.get((t, system)) for t in targets if trainable.get((t, system)) is not None)
        table.append([*cells, " / ".join(f"{c:,}" for c in counts) or "-"])
    keys = ["sources", "source_rows", "source_epochs", "sst2_rows", "sst2_epochs", "rte_epochs", "seeds", "head_lr"]
    settings = {**data["settings"], "sources": ", ".join(data["settings"].get("sources", [])) or None}
    settings["seeds"] = seed_list(data["settings"].get("seeds", [])) or None
    keys += ["target_lora_lr", "lora_lr", "jobs"]
    return "\n\n".join([settings_line(settings, keys), markdown_table(header, table)])


def render_main_job(name: str, data: dict) -> str:
    rows = [
        [task_name(task), METRIC_NAMES.get(data["metrics"][task], data["metrics"][task]), num(score, ".4f")]
        for task, score in data["test_scores"].items()
    ]
    timing = (
        f"Wall time of the launch command {num(data['wall_seconds'], '.0f')} s, of which training "
        f"{num(data['train_runtime'], '.0f')} s ({data['train_mixed_precision']}); validation average "
        f"{num(data['eval_average'], '.4f')}, test average {num(data['test_average'], '.4f')}."
    )
    return "\n\n".join([markdown_table(["task", "metric", "test"], rows), timing])


def render_gpu_check(name: str, data: dict) -> str:
    from gpu_check import table  # the script's own summary table

    run = "a dry run on CPU with a tiny model (bookkeeping only)" if data.get("dry_run") else f"one {data['device']}"
    return "\n\n".join([f"On {run}; {num(data['wall_s'], '.0f')} s in all.", table(data["checks"])])


def render_export(name: str, data: dict) -> str:
    scores, settings, export = data["scores"], data["settings"], data["export"]
    header = [
        "runtime",
        "size (MiB)",
        "batch 1 latency p50 / p90 (ms)",
        f"batch {settings['throughput_batch']} texts/s",
    ]
    header += [f"{task_name(task)} {METRIC_NAMES.get(s['metric'], s['metric'])}" for task, s in scores.items()]
    table = [
        [row["runtime"], num(row["size_mib"], ".0f")]
        + [f"{row['latency_ms_p50']:.1f} / {row['latency_ms_p90']:.1f}", f"{row['throughput_texts_per_s']:.0f}"]
        + [f"{row['scores'][task][s['metric']]:.4f}" for task, s in scores.items()]
        for row in data["rows"]
    ]
    table.append(["the run's own test figures (`all_results.json`)", "", "", ""])
    table[-1] += [num(s["recorded"], ".4f") for s in scores.values()]
    quantization = export["quantization"] or {}
    return "\n\n".join(
        [
            markdown_table(header, table),
            f"Run `{data['run']}`; {settings['threads']} threads for every runtime; latency over "
            f"{settings['latency_texts']} TREC-6 test questions one at a time, throughput over "
            f"{settings['throughput_texts']}, best of {settings['rounds']} rounds; scores on "
            + ", ".join(f"`{f}`" for f in settings["test_files"].values())
            + f" at max length {settings['max_length']}. Export: opset {export['opset']}, largest logit difference "
            f"to PyTorch on the export's check batch {export['max_abs_difference_to_torch']:.1e}; int8: "
            f"{quantization.get('method', '-')} quantization of {', '.join(quantization.get('op_types', []))} "
            f"weights (onnxruntime {export['versions'].get('onnxruntime')}).",
        ]
    )


def render_serve(name: str, data: dict) -> str:
    rows, summary, settings = data["rows"], data["summary"], data["settings"]
    parts = [
        f"Settings: {settings['requests']} requests (queries) per system and concurrency, each one real text; "
        f"best of {settings['rounds']} interleaved rounds; our servers at `--max_batch_size` "
        f"{settings['max_batch_size']}, `--max_wait_ms` {settings['max_wait_ms']:g}, `--cpu_threads` "
        f"{settings['cpu_threads'] or 'default'}, `--precision` {settings.get('precision', 'fp32')}."
    ]
    for comparison in dict.fromkeys(r["comparison"] for r in rows):
        mine = [r for r in rows if r["comparison"] == comparison]
        unit = mine[0]["unit"]
        table = [
            [r["system"], r["concurrency"], f"{r['per_s']:.1f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}"]
            + [", ".join(f"{x:.1f}" for x in r.get("rounds_per_s", []))]
            for r in mine
        ]
        header = ["system", "concurrency", f"{unit}/s", "p50 ms", "p99 ms", f"{unit}/s per round"]
        parts += [f"**{comparison}**", markdown_table(header, table)]
    parts.append(
        f"At concurrency {summary['concurrency']}: {summary['speedup_vs_naive']:.2f}x the requests/s of the naive "
        f"server at its best ({summary['naive_baseline']}), p99 {summary['p99_ms']:.0f} ms against "
        f"{summary['naive_p99_ms']:.0f} ms; the multi-task server answers "
        f"{summary['multitask_speedup_vs_single_task_servers']:.2f}x the three-task queries/s of three single-task "
        "servers."
    )
    runs = data.get("single_task_runs", {})
    if runs:
        scores = ", ".join(
            f"{task_name(t)} {num(r.get('test_accuracy', r.get('test_f1')), '.4f')}" for t, r in runs.items()
        )
        parts.append(f"Single-task runs ({settings['train_steps']} training steps each; test score: {scores}).")
    if data.get("bf16_agreement"):
        same = ", ".join(f"{task_name(t)} {a['same']}/{a['texts']}" for t, a in data["bf16_agreement"].items())
        parts.append(
            f"bf16 weights against float32 on the multi-task run, test texts with the same answer (label; NER: every "
            f"span): {same}."
        )
    parts.append("Targets:\n" + targets_list(summary["targets"]))
    return "\n\n".join(parts)


def render_serve_sweep(name: str, data: dict) -> str:
    """Our server over a grid of batching settings: one row per setting, req/s and latency per concurrency."""
    levels = list(dict.fromkeys(r["concurrency"] for r in data["sweep"]))
    cells: dict[tuple, dict] = {}
    for r in data["sweep"]:
        cells.setdefault((r["cpu_threads"] or "default", r["max_batch_size"], r["max_wait_ms"]), {})[
            r["concurrency"]
        ] = r
    table = [
        [threads, size, f"{wait:g}"]
        + [
            f"{c[level]['per_s']:.0f} ({c[level]['p50_ms']:.0f} / {c[level]['p99_ms']:.0f})" if level in c else "-"
            for level in levels
        ]
        for (threads, size, wait), c in cells.items()
    ]
    header = ["cpu_threads", "max_batch_size", "max_wait_ms"] + [f"c={n}: req/s (p50 / p99 ms)" for n in levels]
    settings = data["settings"]
    note = (
        f"`nlptransfer serve` on the TREC-6 run at `--precision` {settings['precision']}, best of 2 runs of "
        f"min({settings['sweep_requests']}, 50 x concurrency) requests per cell."
    )
    return "\n\n".join([note, markdown_table(header, table)])


def render_multilabel(name: str, data: dict) -> str:
    rows = [
        [
            s["system"],
            f"{s['parameters'] / 1e6:.1f}M",
            s["seeds"],
            spread(s["test_macro_f1"], s["test_macro_f1_std"], ".4f", s["seeds"]),
            num(s["test_micro_f1"], ".4f"),
            num(s["train_runtime_s"], ".0f"),
            num(s["peak_rss_mib"], ".0f"),
        ]
        for s in data["summary"]
    ]
    rows += [[system, f"{params / 1e6:.0f}M", "", f"{f1:.3f} (published: {source})", "", "", ""]
             for system, params, f1, source in data["published"]]  # fmt: skip
    header = ["system", "parameters", "seeds", "test macro F1", "test micro F1", "train s", "peak RSS MiB"]
    return f"{data['epochs']:g} epochs, bf16: {data['bf16']}.\n\n" + markdown_table(header, rows)


def render_threshold_choice(name: str, data: dict) -> str:
    rows = [[rule, spread(mean, std, ".4f", data["halves"])] for rule, (mean, std) in data["summary"].items()]
    note = f"Run `{Path(data['run']).name}`; thresholds tuned on one half of validation, scored on the other "
    note += f"({data['halves']} halves)."
    return note + "\n\n" + markdown_table(["rule", "held-out macro F1"], rows)


def render_imbalance(name: str, data: dict) -> str:
    rows = [
        [s["system"], s["seeds"], spread(s["test_macro_f1"], s["std"], ".4f", s["seeds"]), num(s["accuracy"], ".4f")]
        for s in data["summary"]
    ]
    counts = data["train_counts"]
    note = f"Training: {counts['negative']} negative, {counts['positive']} positive sentences."
    return note + "\n\n" + markdown_table(["system", "seeds", "test macro F1", "test accuracy"], rows)


def render_data(name: str, data: dict) -> str:
    rows = [
        [
            f"{r['rows']:,}",
            r["system"],
            num(r["prep_s"], ".1f"),
            f"{r['rows_per_s']:,.0f}",
            num(r["first_step_s"], ".1f"),
            num(r["peak_rss_mib"], ".0f"),
            f"{r['peak_rss_anon_mib']:.0f} / {r['peak_rss_file_mib']:.0f}",
            num(r.get("arrow_resident_mib"), ".0f"),
            num(r["children_peak_rss_mib"], ".0f"),
        ]
        for r in data["rows"]
    ]
    header = ["rows", "system", "prep s", "rows/s", "first step s", "peak RSS MiB", "own / file-backed MiB",
              "Arrow pages at step 5, MiB", "workers' peak MiB"]  # fmt: skip
    s, t = data["summary"], data["targets"]
    small, large = s["rss_ratio"]["rows"]
    lines = [
        f"- peak RSS at {large:,} rows / at {small:,} rows: {s['rss_ratio']['value']:.2f}x "
        f"(target <= {t['rss_ratio_max']}x: {'met' if s['met']['rss'] else 'not met'})",
        "- warm-cache preparation / cold: "
        + ", ".join(f"{int(n):,}: {100 * f:.1f}%" for n, f in s["warm_fraction"].items())
        + f" (target <= {100 * t['warm_fraction_max']:.0f}%: {'met' if s['met']['warm'] else 'not met'})",
        "- cold preprocessing rows/s: "
        + ", ".join(f"{int(n):,}: {v:,.0f}" for n, v in s["cold_rows_per_s"].items())
        + f" (target >= {t['rows_per_s_min']:,}: {'met' if s['met']['speed'] else 'not met'})",
    ]
    return markdown_table(header, rows) + "\n\n" + "\n".join(lines)


def render_long_text(name: str, data: dict) -> str:
    rows = [
        [r["domain"], r["system"], num(r["test_accuracy"], ".4f"), num(r["eval_accuracy"], ".4f"),
         num(r["train_runtime_s"], ".0f"), num(r["peak_rss_mib"], ".0f")]
        for r in data["rows"]
    ]  # fmt: skip
    lengths = "; ".join(
        f"{domain}: median {v['median']}, 90th percentile {v['p90']}, {100 * v['over_128']:.0f}% over 128, "
        f"{100 * v['over_512']:.0f}% over 512"
        for domain, v in data["test_token_lengths"].items()
    )
    header = ["domain", "system", "test accuracy", "validation accuracy", "train s", "peak RSS MiB"]
    return f"Test review lengths in tokens: {lengths}.\n\n" + markdown_table(header, rows)


# ---- the page ------------------------------------------------------------------------------------------------

# benchmark -> (title, what it compares: no numbers here, they all come from the JSONs)
BENCHMARKS = {
    "main_job": (
        "The README's main job",
        "`bench_main_job.py`: the launch half of the README's first set-up command, word for word, after its "
        "install: one MiniLM encoder trained on TREC-6, SST-2 and CoNLL-2003 at once (the shipped config).",
    ),
    "finetune": (
        "Fine-tuning speed and quality vs the transformers Trainer",
        "`bench_finetune.py`: `recipes/finetune.py` with its defaults against a plain transformers `Trainer` set up "
        "as the official examples do (`trainer_baseline.py`, every row padded to the maximum length) and tuned "
        "(dynamic padding, length-grouped batches), plus opt-in nlptransfer ablations; each system in its own "
        "process on the same data, model, seeds, epochs, batch size and learning rate. Train time is the training "
        "loop (with its per-epoch validation where there is one); MFU is the model FLOPs of the real tokens over "
        "the training-step time and this machine's matmul peak.",
    ),
    "trainer": (
        "Reference: the transformers Trainer as the examples set it up",
        "`trainer_baseline.py`: a plain `Trainer` following `run_glue.py` / `run_ner.py` (first sub-word labelled, "
        "best model on validation F1 for NER).",
    ),
    "step": (
        "What a training step costs",
        "`bench_step.py`: the fine-tuning recipe's model, batches and optimizer with one setting changed at a time, "
        "timed on the same batches (the best round counts). `profile_step.py`: torch.profiler over the same steps, "
        "self time per kind of operator scaled to the un-profiled ms/step of the same run, and the encoder's own "
        "matmul shapes timed alone.",
    ),
    "lora": (
        "LoRA vs full fine-tuning",
        "`bench_lora.py`: each system runs `recipes/finetune.py` in its own process with the same seed and batch "
        "size; LoRA gets its own learning rate and epochs (the recipe flags column).",
    ),
    "mtl": (
        "Multi-task vs single-task",
        "`bench_mtl.py`: per seed, one multi-task model against single-task models trained for as many updates as "
        "each task got in the multi-task run (same seed and settings). Δ is in points, multi-task minus "
        "single-task; validation Δ is what settings are chosen on (test never). Serving times one multi-task "
        "`predict` over every task against the single-task models, back to back in paired rounds. Each JSON holds "
        "the config it ran.",
    ),
    "distill": (
        "Distillation",
        "`bench_distill.py`: students cut from a fine-tuned MiniLM teacher's layers, trained on the labels only or "
        "distilled, and MiniLM distilled from a fine-tuned mpnet teacher (MiniLM fine-tuned on the labels is its "
        "labels-only baseline). Throughput: forward passes over the test set, all models of a task in one process.",
    ),
    "distill_fair": (
        "Distillation against a tuned labels-only student",
        "`bench_distill_fair.py`: CoNLL-2003, 2-layer students cut from one MiniLM teacher; the labels-only "
        "student gets the distilled student's search budget (8 settings on validation F1, seed 42), then the "
        "chosen setting and the distilled students run with every seed; gains are paired by seed.",
    ),
    "transferability": (
        "Transferability scores vs fine-tuning",
        "`bench_transferability.py`: LogME and H-score of each candidate encoder's frozen features, then every "
        "candidate fine-tuned with the same budget; Kendall's τ_b between each score and the fine-tuned result.",
    ),
    "domain": (
        "Adversarial domain adaptation",
        "`bench_domain.py`: Amazon reviews, target-domain test accuracy, mean ± std over seeds (per seed in "
        "parentheses). `dann W im I`: domain loss weight W and information maximisation on the target rows at "
        "weight I (`dann 0 im I`: that term alone); `target_only` is the in-domain ceiling; the label-free row "
        "takes, per direction and seed, the setting with the lowest DEV estimate (no target labels).",
    ),
    "fewshot": (
        "Few-shot transfer to unseen classes",
        "`bench_fewshot.py`: TREC's fine classes split into meta-train, meta-validation and meta-test groups "
        "(results from before meta-validation: meta-train and meta-test, one fine-tuning budget for every start). "
        "Each start adapts to an episode as a prototype classifier on frozen features or fine-tuned on the support "
        "set; the adaptation, and each meta-learner's settings, are chosen on meta-validation episodes; every "
        "start is scored on the same meta-test episodes.",
    ),
    "gpu_check": (
        "GPU check",
        "`scripts/gpu_check.sh` (`gpu_check.py`): on one GPU, fine-tuning in bf16, FSDP and ZeRO-3 at world size 1 "
        "through the sharded save paths (each reloaded in a fresh process to the recorded test accuracy), LoRA with "
        "`--merge`, the multi-task recipe, and training tokens/s against a plain `Trainer` at its best.",
    ),
    "fusion": (
        "Multi-source adapter fusion",
        "`bench_fusion.py`: LoRA adapters trained on source tasks, folded into the frozen encoder for a low-data "
        "target (one source, a uniform merge, a learned per-layer mix), against a head on the plain frozen encoder "
        "and a fresh LoRA adapter on the target. Accuracy, mean ± std over seeds; Δ in points against the head only, "
        "in bold where it is below by more than the std over seeds.",
    ),
    "export": (
        "ONNX export: PyTorch vs ONNX Runtime fp32 vs int8",
        "`bench_export.py`: one run served by the same `Predictor` on each runtime in one process (PyTorch, also "
        "under bf16 autocast on a CPU with bf16 matmuls; its `nlptransfer export onnx` graph in ONNX Runtime; that "
        "graph with int8 dynamic quantization), all on the same threads, the runtimes "
        "taking turns in each round. Latency includes tokenizing, not decoding. Scores are each task's test set "
        "scored by the task kind's own code (CoNLL-2003: entity F1 over words, as the recipes score it).",
    ),
    "serve": (
        "Serving: throughput and latency",
        "`bench_serve.py`: `nlptransfer serve` on loopback under a bounded load (one real text per request, "
        "concurrency 1, 8 and 32) against `naive_server.py`, FastAPI + uvicorn calling a transformers `pipeline` "
        "per request with no batching (at torch's default threads and at one thread, in float32 and with bf16 "
        "weights; the fastest at concurrency 32 is the baseline); and three-task queries "
        "answered by the multi-task run in one request against three single-task servers (three requests, the "
        "query lasting until the slowest answers). Client and servers share the machine's cores.",
    ),
    "multilabel": (
        "Multi-label classification (GoEmotions)",
        "`bench_multilabel.py`: `recipes/finetune.py --task_type multilabel` with its defaults against a plain "
        "`Trainer` (`trainer_multilabel.py`) given the same learning rate, warm-up, epochs, batch size, bf16 choice, "
        "best epoch on validation and threshold choice on validation; published BERT-base figures for reference. "
        "`threshold_choice.py`: per-label vs one global threshold, judged on validation halves alone.",
    ),
    "threshold_choice": (
        "Multi-label thresholds: which rule generalises",
        "`threshold_choice.py`: a trained multi-label run's validation predictions split in halves many times; "
        "thresholds tuned on one half by each rule, macro F1 on the other. No test label takes part.",
    ),
    "imbalance": (
        "Class imbalance: --class_weights",
        "`bench_imbalance.py`: SST-2 with positives cut to 10% of training, with and without `--class_weights "
        "balanced`; test is SST-2 validation (about half positive).",
    ),
    "data": (
        "Data at scale: Python rows vs Arrow",
        "`bench_data.py`: `recipes/finetune.py` (MiniLM, 128 tokens, batch 32) to its 5th optimizer step on SST-2 "
        "train repeated to 10k-5M rows (each text with its row number appended), in a fresh process per run: the "
        "data path before Arrow (rows as Python objects, a worktree of the older commit) as far as it fits in "
        "memory, and the Arrow path with an empty and then a warm `datasets` cache. Prep is reading, checking and "
        "tokenizing; the first step counts from process start (model loading included). RSS counts the pages of "
        "memory-mapped files the process has read (file-backed); the sampled peaks of both parts are shown, and "
        "how much of the file-backed part the Arrow files (raw rows and tokenized cache) held at the last step.",
    ),
    "long_text": (
        "Long texts: truncate vs chunk vs a longer window",
        "`bench_long_text.py`: Amazon reviews per domain (seeded 1,400 / 200 / 400 split), `recipes/finetune.py` "
        "with its defaults at a 128-token window truncated, chunked (`--long_text chunk`, mean of the windows' "
        "logits), and at a 512-token window.",
    ),
}
RENDERERS: dict[str, Callable[[str, dict], str]] = {
    "data": render_data,
    "multilabel": render_multilabel,
    "threshold_choice": render_threshold_choice,
    "imbalance": render_imbalance,
    "long_text": render_long_text,
    "export": render_export,
    "serve": render_serve,
    "serve_sweep": render_serve_sweep,
    "main_job": render_main_job,
    "finetune": render_finetune,
    "trainer": render_trainer,
    "step": render_step,
    "step_profile": render_step_profile,
    "lora": render_lora,
    "mtl": render_mtl,
    "distill": render_distill,
    "distill_fair": render_distill_fair,
    "transferability": render_transferability,
    "domain": render_domain,
    "fewshot": render_fewshot,
    "fusion": render_fusion,
    "gpu_check": render_gpu_check,
}


def benchmark_of(name: str) -> str | None:
    """The benchmark a results file belongs to: its name up to the first `_` that one of BENCHMARKS matches."""
    stem = Path(name).stem
    keys = [key for key in BENCHMARKS if stem == key or stem.startswith(key + "_")]
    return max(keys, key=len, default=None)  # distill_fair.json is distill_fair's, not distill's


def is_quick(data: dict, name: str) -> bool:
    quick = data.get("quick") or data.get("dry_run") or data.get("settings", {}).get("quick")
    return bool(quick) or Path(name).stem.endswith(("_quick", "_dry"))


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, spaces to hyphens, only letters, digits, `-` and `_` kept."""
    return "-".join("".join(c for c in title.lower() if c.isalnum() or c in " -_").split(" "))


def file_block(name: str, data: dict, level: str = "###") -> str:
    """A results file's heading, the command that wrote it, the machine it names, and its tables."""
    parts = [f"{level} `{name}`", "```bash\n" + data.get("command", "# (no command recorded)") + "\n```"]
    machine = data.get("machine")
    if machine:
        cpu = f"{machine.get('cpu')} ({machine.get('cpu_cores')} cores usable"
        cpu += f"; {', '.join(machine['cpu_flags'])})" if machine.get("cpu_flags") else ")"
        gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
        versions = ", ".join(f"{k} {machine[k]}" for k in ("torch", "transformers") if machine.get(k))
        parts.append(f"Machine: {cpu}{gpu}; {versions}.")
    stem = Path(name).stem
    renderer = RENDERERS.get(stem) or RENDERERS[benchmark_of(name)]
    parts.append(renderer(name, data))
    return "\n\n".join(parts)


def load(results: Path = RESULTS) -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(results.glob("*.json"))}


def render(results: Path = RESULTS) -> str:
    """The whole README.md for the JSONs in `results`."""
    files = load(results)
    sections, quick, unknown = [], [], []
    for key, (title, about) in BENCHMARKS.items():
        mine = [(n, d) for n, d in files.items() if benchmark_of(n) == key]
        quick += [(n, d) for n, d in mine if is_quick(d, n)]
        full = sorted(
            (item for item in mine if not is_quick(item[1], item[0])), key=lambda item: item[0] != f"{key}.json"
        )
        if not full:
            continue
        blocks = [f"## {title}", about]
        if key == "mtl" and len(full) > 1:
            blocks += ["Every multi-task JSON side by side (details of each below):", render_mtl_settings(full)]
        blocks += [file_block(n, d) for n, d in full]
        sections.append((title, "\n\n".join(blocks)))
    if quick:
        blocks = [
            "## Smoke runs (`--quick`)",
            "Tiny budgets that check a benchmark runs end to end; their numbers say nothing about the methods.",
        ]
        sections.append(("Smoke runs (--quick)", "\n\n".join(blocks + [file_block(n, d) for n, d in quick])))
    unknown = [(n, d) for n, d in files.items() if benchmark_of(n) is None]
    if unknown:
        blocks = ["## Other results", "JSONs of no benchmark `report.py` knows (add a renderer):"]
        blocks += [f"- `{n}`: `{d.get('command', '(no command recorded)')}`" for n, d in unknown]
        sections.append(("Other results", "\n".join(blocks[:1]) + "\n\n" + "\n".join(blocks[1:])))
    head = [
        "# Benchmark results",
        "<!-- Generated by `python benchmarks/report.py` from benchmarks/results/*.json: do not edit by hand. -->",
        "This page is generated by `python benchmarks/report.py` from the JSON files in [`results/`](results/), and "
        "from nothing else: every number below comes from one of them, and each table names its file and the "
        "command that wrote it (the JSON's `command` field). After a benchmark writes a JSON, run "
        "`python benchmarks/report.py`; `tests/test_report.py` fails while this page is out of date.",
        "\n".join(f"- [{title}](#{slug(title)})" for title, _ in sections),
    ]
    return "\n\n".join(head + [body for _, body in sections]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md differs from a fresh render")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not README.is_file() or README.read_text() != text:
            sys.exit(f"{README} is out of date: run `python benchmarks/report.py`")
        print(f"{README} is up to date")
        return
    README.write_text(text)
    print(f"written to {README}")


if __name__ == "__main__":
    main()
