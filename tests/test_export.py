"""`nlptransfer.export` and the onnx backend: every run kind exports to one ONNX graph that answers as PyTorch
does (logits within 1e-4, on batches of another size and length than the export traced), `predict --backend
onnx` prints what `--backend torch` prints, and bad folders are one-line errors."""

import json

import numpy as np
import pytest
import torch

from nlptransfer.cli import main as cli
from nlptransfer.export import export_onnx
from nlptransfer.inference import load_predictor
from nlptransfer.runs import ONNX_FILE

from conftest import DATA_DIR, make_classification_rows, make_ner_rows

pytest.importorskip("onnxruntime")

# other sizes than the export's sample (2 rows): 5 rows of mixed lengths, so padding varies too
TEXTS = [row["text"] for row in make_classification_rows(3, seed=21)] + [
    " ".join(row["tokens"]) for row in make_ner_rows(2, seed=22)
]


def both_logits(run, export, texts) -> tuple[dict, dict]:
    torch_predictor = load_predictor(run, backend="torch")
    onnx_predictor = load_predictor(export / "model.onnx", backend="onnx")  # fp32, also when int8 is the default
    assert onnx_predictor.task_names == torch_predictor.task_names
    return torch_predictor.logits(texts)[2], onnx_predictor.logits(texts)[2]


@pytest.fixture(scope="module")
def exports(trained_runs, tmp_path_factory) -> dict:
    """Each run exported with `nlptransfer export onnx` (the multi-task one with --quantize int8 too)."""
    root = tmp_path_factory.mktemp("exports")
    for kind, run in trained_runs.items():
        quantize = ["--quantize", "int8"] if kind == "multitask" else []
        assert cli(["export", "onnx", str(run), str(root / kind), *quantize]) == 0
    return {kind: root / kind for kind in trained_runs}


@pytest.mark.skipif(not (DATA_DIR / "trec").exists(), reason="needs ../shared/data")
def test_minilm_exports_and_matches_pytorch_on_trec_questions(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from nlptransfer.resolve import resolve_model

    path = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    labels = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=6, id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)}
    )
    model.save_pretrained(tmp_path / "run")
    AutoTokenizer.from_pretrained(path).save_pretrained(tmp_path / "run")
    export_onnx(tmp_path / "run", tmp_path / "onnx")
    rows = [json.loads(line) for line in (DATA_DIR / "trec" / "test.jsonl").read_text().splitlines()[:64]]
    reference, ours = both_logits(tmp_path / "run", tmp_path / "onnx", [row["text"] for row in rows])
    assert ours["classification"].shape == reference["classification"].shape == (64, 6)
    np.testing.assert_allclose(reference["classification"], ours["classification"], atol=1e-4, rtol=0)
    manifest = json.loads((tmp_path / "onnx" / ONNX_FILE).read_text())
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["outputs"] == ["classification"] and manifest["tasks"][0]["labels"] == labels
    assert manifest["opset"] == 18 and manifest["versions"]["onnxruntime"] and manifest["quantization"] is None


@pytest.mark.parametrize("kind", ["classification", "ner", "lora", "multitask"])
def test_each_run_kind_exports_one_graph_that_matches_pytorch(kind, trained_runs, exports):
    reference, ours = both_logits(trained_runs[kind], exports[kind], TEXTS)
    for name, logits in reference.items():
        assert ours[name].shape == logits.shape and logits.shape[0] == len(TEXTS)
        np.testing.assert_allclose(ours[name], logits, atol=1e-4, rtol=0, err_msg=name)
    manifest = json.loads((exports[kind] / ONNX_FILE).read_text())
    assert manifest["outputs"] == list(reference) and manifest["source_run"] == str(trained_runs[kind].resolve())


def test_multitask_graph_runs_the_encoder_once_and_quantizes(trained_runs, exports):
    import onnx

    graph = onnx.load(str(exports["multitask"] / "model.onnx"), load_external_data=False).graph
    assert [output.name for output in graph.output] == ["topic", "people"]
    embedding_lookups = [node for node in graph.node if node.op_type == "Gather" and "word_embeddings" in str(node)]
    assert len(embedding_lookups) == 1  # one encoder pass serves both heads
    manifest = json.loads((exports["multitask"] / ONNX_FILE).read_text())
    assert manifest["default_file"] == "model_int8.onnx" and manifest["quantization"]["weight_type"] == "int8"
    int8 = load_predictor(exports["multitask"], backend="onnx")  # the folder's default: its int8 graph
    fp32 = load_predictor(exports["multitask"] / "model.onnx", backend="onnx")
    texts = [row["text"] for row in make_classification_rows(16, seed=23)]
    same = sum(a["topic"]["label"] == b["topic"]["label"] for a, b in zip(int8.predict(texts), fp32.predict(texts)))
    assert same >= 14


def test_per_task_adapters_export_one_pass_per_task(tiny_model, tmp_path):
    from peft import LoraConfig

    from nlptransfer import MultiTaskModel
    from nlptransfer.tasks import TaskSpec

    tasks = [
        TaskSpec(name="topic", kind="classification", labels=["food", "sport", "tech"]),
        TaskSpec(name="people", kind="ner", labels=["O", "B-LOC", "B-PER"]),
    ]
    model = MultiTaskModel.from_encoder(tiny_model, tasks, layer_mix=["people"])
    model.add_adapter(LoraConfig(r=4, target_modules=["query", "value"]), per_task=True)
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA's B starts at zero: make each task's adapter change the encoder, differently
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    model.save_pretrained(tmp_path / "run")
    export_onnx(tmp_path / "run", tmp_path / "onnx")
    reference, ours = both_logits(tmp_path / "run", tmp_path / "onnx", TEXTS)
    for name in ("topic", "people"):
        np.testing.assert_allclose(ours[name], reference[name], atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize("kind", ["ner", "multitask"])
def test_predict_with_the_onnx_backend_prints_what_torch_prints(kind, trained_runs, exports, capsys):
    texts = ["Anna visited Paris today .", "the new pasta story today"]

    def predict(*argv) -> list[dict]:
        capsys.readouterr()
        assert cli(["predict", str(argv[0]), *texts, *map(str, argv[1:])]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    torch_lines = predict(trained_runs[kind], "--backend", "torch")
    onnx_lines = predict(exports[kind] / "model.onnx", "--backend", "onnx")
    assert [line["text"] for line in onnx_lines] == texts
    assert _rounded(onnx_lines) == _rounded(torch_lines)


def _rounded(value):
    """Predictions with scores to 4 places: the backends' float32 sums differ in the last bits."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def test_bad_folders_are_one_line_errors_and_nothing_is_overwritten(trained_runs, exports, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "precious.txt").write_text("keep me")
    cases = [
        (["export", "onnx", str(trained_runs["classification"]), str(taken)], f"{taken} exists and is not empty"),
        (["predict", str(trained_runs["ner"]), "x", "--backend", "onnx"], "export it first"),
        (["predict", str(exports["ner"]), "x"], "an ONNX export, not a run folder"),
        (["predict", str(tmp_path), "x", "--backend", "onnx"], f"no {ONNX_FILE}"),
        (["export", "onnx", str(trained_runs["ner"]), str(tmp_path / "q"), "--quantize", "int4"], "--quantize"),
        (["export", "onnx", str(trained_runs["ner"]), str(tmp_path / "q"), "--opset", "14"], "cannot be converted"),
    ]
    for argv, says in cases:
        capsys.readouterr()
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err  # loading a model draws transformers' progress bars there too
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and says in errors[0] and "Traceback" not in err, (argv, err)
    assert sorted(p.name for p in taken.iterdir()) == ["precious.txt"]
    assert (taken / "precious.txt").read_text() == "keep me" and not (tmp_path / "q").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]  # a failed export leaves nothing


def test_an_export_folder_holds_the_graph_tokenizer_and_manifest(exports, capsys):
    names = sorted(p.name for p in exports["classification"].iterdir() if not p.name.startswith("tokenizer"))
    assert names == ["model.onnx", ONNX_FILE]
    assert not [p for p in exports["classification"].parent.iterdir() if p.name.endswith(".partial")]
    capsys.readouterr()
    assert cli(["predict", str(exports["classification"]), "a good match with the coach", "--backend", "onnx"]) == 0
    assert json.loads(capsys.readouterr().out)["prediction"]["label"] == "sport"


def test_the_server_answers_from_an_export_as_predict_does(exports):
    """`nlptransfer serve OUT --backend onnx`: the app over the exported multi-task graph (fp32 file), in process."""
    from starlette.testclient import TestClient

    from nlptransfer.serving.app import build_app
    from nlptransfer.serving.config import ServeConfig
    from nlptransfer.serving.metrics import ServeMetrics
    from nlptransfer.serving.server import load_models

    texts = ["Anna visited Paris today .", "the new pasta story today"]
    config = ServeConfig(backend="onnx", precision="fp32")
    models = load_models([f"mtl={exports['multitask'] / 'model.onnx'}"], config, ServeMetrics())
    expected = load_predictor(exports["multitask"] / "model.onnx", backend="onnx").predict(texts)
    with TestClient(build_app(models, config)) as client:
        answer = client.post("/predict/tasks", json={"inputs": texts})
        assert answer.status_code == 200, answer.text
        assert _rounded(answer.json()) == _rounded(expected)
        info = client.get("/info").json()
    assert info["models"][0]["backend"] == "onnx" and [t["name"] for t in info["models"][0]["tasks"]] == [
        "topic",
        "people",
    ]
