"""The multi-task benchmark keeps each --workdir to one setting: finished runs are reused only with their config."""

import json
import sys

import pytest
import yaml

import bench_mtl
from conftest import REPO

SHIPPED = REPO / "recipes" / "configs" / "trec_sst2_conll.yaml"


def test_config_changes_names_each_differing_field_and_its_task():
    old = yaml.safe_load(SHIPPED.read_text())
    new = json.loads(json.dumps(old))
    new["tasks"][2]["private_layers"] = 1
    new["learning_rate"] = 2e-4
    assert bench_mtl.config_changes(old, old) == []
    assert bench_mtl.config_changes(old, new) == [
        "learning_rate: 0.0001 -> 0.0002",
        "tasks[2] (conll2003).private_layers: absent -> 1",
    ]


def test_a_workdir_with_finished_runs_refuses_another_config(tmp_path, monkeypatch):
    workdir = tmp_path / "runs"
    (workdir / "seed42").mkdir(parents=True)
    trained = yaml.safe_load(SHIPPED.read_text())
    (workdir / "config.yaml").write_text(yaml.safe_dump(trained, sort_keys=False))
    (workdir / "seed42" / "bench_result.json").write_text("{}")
    other = json.loads(json.dumps(trained))
    other["tasks"][1]["weight"] = 1.5
    config = tmp_path / "other.yaml"
    config.write_text(yaml.safe_dump(other, sort_keys=False))
    argv = ["bench_mtl.py", "--config", str(config), "--workdir", str(workdir), "--output", str(tmp_path / "out.json")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match=r"tasks\[1\] \(sst2\)\.weight: absent -> 1\.5"):
        bench_mtl.main()
    assert yaml.safe_load((workdir / "config.yaml").read_text()) == trained  # the stored config is kept
    assert not (tmp_path / "out.json").exists()
