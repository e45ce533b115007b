"""How benchmarks choose settings and pair runs (issue #27): no test label takes part in a choice, and
differences are paired by seed."""

import bench_domain
import bench_lora
import pytest


def domain_row(direction, method, seed, target, dev_error):
    row = {"direction": direction, "method": method, "seed": seed, "target_accuracy": target}
    return row | {"dev_error": dev_error, "dev_risk": 1.0, "validation_accuracy": 0.9}


def test_domain_choice_follows_the_label_free_criterion_not_target_accuracy():
    settings = ["dann 0 im 0.3", "dann 0.03", "dann 0.03 im 0.3"]
    rows = []
    for seed in (1, 2):
        for direction in ("a -> b", "b -> a"):
            # the best target accuracy sits with the worst dev_error: a choice that read it would pick it
            rows.append(domain_row(direction, "dann 0 im 0.3", seed, 0.90, 0.30))
            rows.append(domain_row(direction, "dann 0.03", seed, 0.80, 0.10))
            rows.append(domain_row(direction, "dann 0.03 im 0.3", seed, 0.85, 0.20 if seed == 1 else 0.05))
    rows.append(domain_row("a -> b", "dann 0.03", 3, 0.7, 0.0))  # a seed where not every setting ran: no choice

    chosen, mean_rank = bench_domain.choose(rows, settings, "dev_error", [1, 2, 3])

    assert [c["chosen"] for c in chosen] == ["dann 0.03", "dann 0.03 im 0.3"] * 2  # (a -> b, b -> a) x seeds 1, 2
    assert all(c["method"] == bench_domain.CHOSEN for c in chosen)
    assert mean_rank == {"dann 0 im 0.3": 3.0, "dann 0.03": 1.5, "dann 0.03 im 0.3": 1.5}


def test_domain_paired_differences_match_direction_and_seed():
    rows = [
        domain_row("a -> b", "dann 0 im 0.3", 1, 0.80, 0),
        domain_row("a -> b", "dann 0.03 im 0.3", 1, 0.83, 0),
        domain_row("a -> b", "dann 0 im 0.3", 2, 0.90, 0),
        domain_row("a -> b", "dann 0.03 im 0.3", 2, 0.89, 0),
        domain_row("b -> a", "dann 0.03 im 0.3", 1, 0.50, 0),  # no partner: left out
    ]
    result = bench_domain.paired(rows, "dann 0.03 im 0.3", "dann 0 im 0.3")
    assert result["pairs"] == 2 and result["wins"] == 1 and result["losses"] == 1
    assert result["mean_points"] == pytest.approx(1.0)  # (+3 - 1) / 2
    assert bench_domain.paired(rows, "dann 0.1", "dann 0 im 0.3") is None


def test_lora_summary_pairs_the_difference_from_full_fine_tuning_by_seed():
    def row(system, seed, score):
        row = {"task": "trec", "system": system, "metric": "accuracy", "seed": seed, "score": score}
        row |= {"validation_score": None, "trainable_parameters": 1, "trainable_percent": 1.0}
        return row | {"saved_weights_mib": 1.0, "train_runtime_s": 10.0 + seed, "peak_rss_mib": 100.0}

    rows = [row(bench_lora.FULL, 1, 0.90), row("LoRA r=4", 1, 0.88), row(bench_lora.FULL, 2, 0.80)]
    rows.append(row("LoRA r=4", 2, 0.84))
    full, lora = bench_lora.summarise(rows)
    assert full["seeds"] == [1, 2] and full["score"] == pytest.approx(0.85) and "delta_vs_full_points" not in full
    assert lora["delta_vs_full_points"] == pytest.approx(1.0)  # (-2 + 4) / 2, paired by seed
    assert lora["delta_vs_full_points_std"] == pytest.approx(4.242640687, rel=1e-6)
    assert lora["validation_score"] is None and lora["train_runtime_s"] == pytest.approx(11.5)


def test_a_kept_row_from_other_settings_stops_the_benchmark(tmp_path):
    from _common import same_flags

    row = {"args": ["--learning_rate", "1e-4"]}
    assert same_flags(row, ["--learning_rate", "1e-4"], tmp_path / "run.json") is row
    with pytest.raises(SystemExit, match="run.json was run with `--learning_rate 1e-4`, not `--learning_rate 3e-4`"):
        same_flags(row, ["--learning_rate", "3e-4"], tmp_path / "run.json")


def test_every_domain_run_keeps_its_row_in_a_file_of_its_own(tmp_path):
    """Setting names hold dots (`im 0.3`): each direction, setting and seed still gets its own row file."""
    names = ["source_only", *(bench_domain.setting_name(w, e) for w in (0, 0.03, 0.1) for e in (0, 0.3) if w or e)]
    files = {
        bench_domain.row_file(bench_domain.run_folder(tmp_path, source, target, name, seed))
        for source, target in bench_domain.DIRECTIONS
        for name in names
        for seed in (42, 43)
    }
    assert len(files) == len(bench_domain.DIRECTIONS) * len(names) * 2
    assert all(f.name.endswith(("-42.json", "-43.json")) for f in files)


def test_once_keeps_a_row_only_if_it_ran_with_the_same_flags(tmp_path):
    from _common import once

    path = tmp_path / "run.json"
    first = once(path, lambda: {"args": ["--seed", "1"]}, flags=["--seed", "1"])
    assert once(path, lambda: pytest.fail("a kept row is not run again"), flags=["--seed", "1"]) == first
    with pytest.raises(SystemExit, match="run.json was run with `--seed 1`, not `--seed 2`"):
        once(path, lambda: pytest.fail("a kept row is not run again"), flags=["--seed", "2"])


def test_domain_report_says_what_dev_rests_on_and_where_rows_ran():
    from report import render_domain

    avx2, bf16 = {"cpu_flags": ["avx2"]}, {"cpu_flags": ["avx2", "avx512f", "avx512_bf16"]}
    rows = [
        domain_row("a -> b", "source_only", 1, 0.8, 0.2) | {"dev_ess": 0.01, "dev_power": 0.2, "machine": avx2},
        domain_row("a -> b", "dann 0.03", 1, 0.8, 0.1) | {"dev_ess": 0.30, "dev_power": 1.0, "machine": bf16},
        domain_row("a -> b", "target_only", 1, 0.9, None) | {"dev_ess": None, "machine": bf16},
    ]
    summary = [{"direction": "a -> b", "method": r["method"], "mean": 0.8, "std": None, "scores": [0.8]} for r in rows]
    text = render_domain("domain.json", {"rows": rows, "summary": summary})
    assert "`source_only` 1.0% / 0.20, `dann 0.03` 30.0% / 1.00." in text
    assert "more than one kind: avx2: 1; avx2, avx512f, avx512_bf16: 2." in text
    one_kind = render_domain("domain.json", {"rows": [{**r, "machine": avx2} for r in rows], "summary": summary})
    assert "more than one kind" not in one_kind


def test_domain_runs_of_one_direction_and_seed_stay_on_one_kind_of_cpu(monkeypatch):
    monkeypatch.setattr(bench_domain, "machine", lambda: {"cpu_flags": ["avx2"]})
    row = domain_row("a -> b", "dann 0.03", 42, 0.8, 0.1)
    bench_domain.same_cpu_kind([row | {"machine": {"cpu_flags": ["avx2"]}}])  # the same kind: runs on
    with pytest.raises(SystemExit, match="a -> b, seed 42 ran on a CPU with \\['avx2', 'avx512_bf16'\\]"):
        bench_domain.same_cpu_kind([row | {"machine": {"cpu_flags": ["avx2", "avx512_bf16"]}}])


def test_domain_run_row_is_saved_once_and_kept_on_resume(monkeypatch, tmp_path):
    from _common import once

    results = {"test_accuracy": 0.8, "source_test_accuracy": 0.9, "eval_accuracy": 0.85, "dev_error": 0.1}
    results |= {"dev_risk": 0.3, "dev_ess": 0.01, "train_runtime": 5.0, "peak_rss_mib": 100.0}
    monkeypatch.setattr(bench_domain, "run", lambda *args: results)
    monkeypatch.setattr(bench_domain, "same_cpu_kind", lambda group: None)
    path, flags = tmp_path / "a-b-dann0.03-1.json", ["--domain_loss_weight", "0.03"]
    args = ("a", "b", "dann 0.03", "dann", 1, flags, tmp_path / "a-b-dann0.03-1", [])
    row = once(path, bench_domain.train, *args, flags=flags)
    assert row["direction"] == "a -> b" and row["dev_ess"] == 0.01 and row["dev_power"] is None and "machine" in row
    monkeypatch.setattr(bench_domain, "run", lambda *args: pytest.fail("a kept run is not trained again"))
    assert once(path, bench_domain.train, *args, flags=flags) == row
