"""benchmarks/README.md is what `python benchmarks/report.py` renders from benchmarks/results/*.json, and every
results JSON says which command wrote it."""

import json
import sys

import _common
import report


def test_committed_readme_is_a_fresh_render():
    fresh = report.render()
    committed = report.README.read_text() if report.README.is_file() else ""
    assert committed == fresh, "benchmarks/README.md is out of date: run `python benchmarks/report.py`"


def test_every_results_json_has_its_command_and_a_table():
    text = report.render()
    for name, data in report.load().items():
        assert data.get("command", "").startswith("python benchmarks/"), f"{name}: no `command` field"
        assert report.benchmark_of(name) is not None, f"{name}: no renderer in benchmarks/report.py"
        assert f"### `{name}`" in text and data["command"] in text


def test_report_renders_only_what_the_jsons_hold(tmp_path):
    row = {"task": "trec", "system": "full fine-tuning", "metric": "accuracy", "score": 0.5, "trainable_parameters": 10}
    row |= {"trainable_percent": 100.0, "saved_weights_mib": 1.0, "train_runtime_s": 2.0, "peak_rss_mib": 3.0}
    (tmp_path / "lora.json").write_text(json.dumps({"command": "python benchmarks/bench_lora.py", "rows": [row]}))
    (tmp_path / "new_bench.json").write_text(json.dumps({"command": "python benchmarks/new_bench.py"}))
    text = report.render(tmp_path)
    assert "accuracy 0.5000" in text and "python benchmarks/bench_lora.py" in text
    assert "## Other results" in text and "`new_bench.json`: `python benchmarks/new_bench.py`" in text
    assert "Multi-task" not in text  # no JSON, no section


def test_write_results_records_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(_common.ROOT / "benchmarks" / "bench_lora.py"), "--quick", "--tasks", "a b"])
    monkeypatch.setattr(_common, "machine", lambda: {"cpu": "test"})
    _common.write_results(tmp_path / "out.json", {"rows": []})
    written = json.loads((tmp_path / "out.json").read_text())
    assert written == {
        "command": "python benchmarks/bench_lora.py --quick --tasks 'a b'",
        "rows": [],
        "machine": {"cpu": "test"},
    }
    assert list(written) == ["command", "rows", "machine"]


def test_markdown_table():
    assert _common.markdown_table(["a", "b"], [[1, None]]) == "| a | b |\n|---|---|\n| 1 |  |"


def test_benchmark_parser_adds_the_shared_flags(tmp_path):
    parser = _common.benchmark_parser("Title.\n\nmore", quick="smoke", seeds=[42, 43], workdir="here")
    args = parser.parse_args(["--quick", "--seeds", "1", "--output", str(tmp_path / "x" / "r.json")])
    assert (args.quick, args.seeds, args.workdir) == (True, [1], None) and parser.description == "Title."
    assert _common.results_path(args, "lora") == tmp_path / "x" / "r.json" and (tmp_path / "x").is_dir()
    args = parser.parse_args(["--quick"])
    assert _common.results_path(args, "lora") == _common.RESULTS / "lora_quick.json"


def test_a_results_file_belongs_to_the_longest_benchmark_name_it_starts_with():
    assert report.benchmark_of("distill_conll.json") == "distill"
    assert report.benchmark_of("distill_fair.json") == report.benchmark_of("distill_fair_quick.json") == "distill_fair"
    assert report.benchmark_of("finetune_avx512bf16.json") == "finetune"
    assert report.benchmark_of("unknown.json") is None
