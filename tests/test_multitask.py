"""MultiTaskModel: routing of mixed batches, gradients for DDP, loss weighting, one-artifact save/load, predict."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nlptransfer import MultiTaskModel, TaskSpec, TrainArguments, build_optimizer
from nlptransfer.batching import MultiTaskCollator, with_task
from nlptransfer.data import encode_splits
from nlptransfer.readers import Records

from conftest import REPO, make_classification_rows, make_ner_rows

CLS = TaskSpec(name="topic", kind="classification", labels=["food", "sport", "tech"])
NER = TaskSpec(name="ner", kind="ner", labels=["O", "B-LOC", "B-PER"])


def tiny_mtl(tiny_model, **kwargs) -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel.from_encoder(tiny_model, [CLS, NER], **kwargs)


def mixed_batch(model: MultiTaskModel, n: int = 6) -> dict:
    """A batch holding both tasks, interleaved, built by the real encoding and collation path."""
    tokenizer = model.tokenizer
    cls = encode_splits(
        {"train": Records("cls", make_classification_rows(n, 7), list(range(1, n + 1)))},
        TaskSpec(**vars(CLS)),
        tokenizer,
        32,
    )
    ner = encode_splits(
        {"train": Records("ner", make_ner_rows(n, 8), list(range(1, n + 1)))}, TaskSpec(**vars(NER)), tokenizer, 32
    )
    a, b = with_task(cls["train"].features, 0), with_task(ner["train"].features, 1)
    features = [f for pair in zip(a, b) for f in pair]
    return MultiTaskCollator(tokenizer.pad_token_id, ["topic", "ner"])(features)


def test_mixed_batch_routes_each_row_to_its_head(tiny_model):
    model = tiny_mtl(tiny_model).eval()
    batch = mixed_batch(model)
    out = model(**batch)
    assert set(out.logits) == {"topic", "ner"} and set(out.losses) == {"topic", "ner"}
    assert out.logits["topic"].shape == (6, 3)
    assert out.logits["ner"].shape == (6, batch["input_ids"].shape[1], 3)
    rows = {name: (batch["task_ids"] == i).nonzero(as_tuple=True)[0] for i, name in enumerate(["topic", "ner"])}
    for name, index in rows.items():  # the same rows alone give the same logits and loss
        alone = model(
            input_ids=batch["input_ids"][index],
            attention_mask=batch["attention_mask"][index],
            token_type_ids=batch["token_type_ids"][index],
            task=name,
            labels={name: batch["labels"][name]},
        )
        torch.testing.assert_close(alone.logits[name], out.logits[name], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.losses[name], out.losses[name], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, out.losses["topic"] + out.losses["ner"])


def test_every_trainable_parameter_gets_a_gradient_even_for_absent_tasks(tiny_model):
    model = tiny_mtl(tiny_model).train()
    batch = mixed_batch(model)
    only_ner = (batch["task_ids"] == 1).nonzero(as_tuple=True)[0]
    single = {k: v[only_ner] for k, v in batch.items() if k != "labels"}
    model(**single, labels={"ner": batch["labels"]["ner"]}).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []  # what DDP needs without find_unused_parameters
    assert all(float(p.grad.abs().sum()) == 0 for p in model.heads["topic"].parameters())  # absent: zero
    assert float(model.heads["ner"].out.weight.grad.abs().sum()) > 0
    assert model.encoder.pooler is None  # the pooler lives in the sequence heads now


def test_static_weights_and_uncertainty_weighting(tiny_model):
    batch = mixed_batch(tiny_mtl(tiny_model))
    weighted = tiny_mtl(tiny_model, task_weights={"topic": 2.0, "ner": 0.5}).eval()
    out = weighted(**batch)
    torch.testing.assert_close(out.loss, 2.0 * out.losses["topic"] + 0.5 * out.losses["ner"])

    learned = tiny_mtl(tiny_model, loss_weighting="uncertainty").train()
    with torch.no_grad():
        learned.loss_weighting.log_vars.copy_(torch.tensor([0.5, -0.3]))
    out = learned(**batch)
    expected = sum(
        torch.exp(-s) * out.losses[name] + 0.5 * s for name, s in zip(["topic", "ner"], torch.tensor([0.5, -0.3]))
    )
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert learned.loss_weighting.log_vars.grad is not None and learned.loss_weighting.log_vars.grad.abs().sum() > 0


def test_learned_loss_weights_train_at_their_own_lr(tiny_model):
    """At the model's LR the log-variances would barely move; their own group lets them settle."""
    moved = {}
    for own in (None, 1e-2):
        model = tiny_mtl(tiny_model, loss_weighting="uncertainty").train()
        weighting = list(model.loss_weighting.parameters())
        optimizer = build_optimizer(model, TrainArguments(learning_rate=1e-4), own_lr=[(weighting, own)] if own else [])
        if own:  # every parameter once; the weights alone in a group with their LR and no decay
            grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
            assert sorted(grouped) == sorted(id(p) for p in model.parameters())
            group = next(g for g in optimizer.param_groups if any(p is weighting[0] for p in g["params"]))
            assert group["params"] == weighting and group["lr"] == own and group["weight_decay"] == 0.0
        batch = mixed_batch(model)
        for _ in range(20):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        moved[own] = float(model.loss_weighting.log_vars.detach().abs().max())
    assert moved[None] < 0.01 < 0.1 < moved[1e-2]


def test_layer_mix_head_reads_a_learned_mix_of_all_layers(tiny_model):
    """Starts as the mean of the embeddings' and every layer's states; its weights get gradients from
    its task's rows only (zero, but present, without them); other tasks still read the last layer."""
    model = tiny_mtl(tiny_model, layer_mix=["ner"]).eval()
    plain = tiny_mtl(tiny_model).eval()
    batch = mixed_batch(model)
    layers = model.encoder(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
    ).hidden_states
    assert len(layers) == model.encoder.config.num_hidden_layers + 1
    mixed = model.task_states("ner", model.encode(batch["input_ids"], batch["attention_mask"]))
    torch.testing.assert_close(mixed, torch.stack(layers).mean(0))
    out, reference = model(**batch), plain(**batch)
    torch.testing.assert_close(out.logits["topic"], reference.logits["topic"])  # the same weights, last layer
    assert not torch.allclose(out.logits["ner"], reference.logits["ner"])
    model.train()
    only_topic = (batch["task_ids"] == 0).nonzero(as_tuple=True)[0]
    inputs = {k: v[only_topic] for k, v in batch.items() if k != "labels"}
    model(**inputs, labels={"topic": batch["labels"]["topic"]}).loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert float(model.layer_mix["ner"].weights.grad.abs().sum()) == 0
    model.zero_grad()
    model(**batch).loss.backward()
    assert float(model.layer_mix["ner"].weights.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match=r"layer_mix names \['nope'\]"):
        tiny_mtl(tiny_model, layer_mix=["nope"])


def test_private_layers_branch_off_the_shared_encoder_for_their_task(tiny_model):
    """A copy of the top layer for `ner`: at first the same outputs as without; once it moves, only `ner`
    changes. A batch of `ner` alone still gives every parameter a gradient (the shared top layer zero)."""
    model, plain = tiny_mtl(tiny_model, private_layers={"ner": 1}).eval(), tiny_mtl(tiny_model).eval()
    batch = mixed_batch(model)
    out, reference = model(**batch), plain(**batch)
    for name in ("topic", "ner"):
        torch.testing.assert_close(out.logits[name], reference.logits[name])
    with torch.no_grad():
        for p in model.private["ner"].parameters():
            p.add_(torch.randn_like(p) * 0.05)
    moved = model(**batch)
    torch.testing.assert_close(moved.logits["topic"], reference.logits["topic"])
    assert not torch.allclose(moved.logits["ner"], reference.logits["ner"])
    rows = (batch["task_ids"] == 1).nonzero(as_tuple=True)[0]  # the same rows alone: the same logits
    alone = model(**{k: v[rows] for k, v in batch.items() if k != "labels"}, labels={"ner": batch["labels"]["ner"]})
    torch.testing.assert_close(alone.logits["ner"], moved.logits["ner"], atol=1e-5, rtol=1e-5)
    model.train()
    alone = model(**{k: v[rows] for k, v in batch.items() if k != "labels"}, labels={"ner": batch["labels"]["ner"]})
    alone.loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    top = list(model.encoder.encoder.layer[-1].parameters())
    assert all(float(p.grad.abs().sum()) == 0 for p in top)  # only the ner rows: the shared top is unused
    assert float(model.encoder.encoder.layer[0].attention.self.query.weight.grad.abs().sum()) > 0
    assert all(float(p.grad.abs().sum()) > 0 for p in model.private["ner"][0].output.parameters())
    for bad, message in (
        ({"private_layers": {"ner": 2}}, "private_layers must be 1-1, got 2"),  # the tiny encoder has 2 layers
        ({"private_layers": {"nope": 1}}, r"private_layers names \['nope'\]"),
        ({"private_layers": {"ner": 1}, "layer_mix": ["ner"]}, "either private_layers or layer_mix"),
    ):
        with pytest.raises(ValueError, match=message):
            tiny_mtl(tiny_model, **bad)
    from nlptransfer.adapters import AdapterArguments, encoder_adapter_config

    with pytest.raises(ValueError, match="adapters do not combine"):
        model.add_adapter(encoder_adapter_config(AdapterArguments(peft="lora", lora_r=2), model.encoder))


def test_parameters_come_part_by_part_across_tasks_as_before_routes(tiny_model):
    """Every head, then every layer mix, then every private copy, whatever task has them (the layout before
    routes): optimizers, their saved states and the gradient norm's sum see the order they saw then, also
    through a wrapper (DDP, distillation)."""
    model = tiny_mtl(tiny_model, layer_mix=["topic"], private_layers={"ner": 1}, loss_weighting="uncertainty")
    names = [name for name, _ in model.named_parameters()]
    parts = [name.split(".")[2] if name.startswith("routes.") else name.split(".")[0] for name in names]
    assert list(dict.fromkeys(parts)) == ["encoder", "head", "mix", "private", "loss_weighting"]
    assert list(dict.fromkeys(name.split(".")[1] for name in names if ".head." in name)) == ["topic", "ner"]
    assert set(names) <= set(model.state_dict())
    assert [id(p) for p in torch.nn.ModuleList([model]).parameters()] == [id(p) for p in model.parameters()]
    assert [id(p) for p in model.task_parameters("ner")] == [id(p) for p in model.routes["ner"].parameters()]


V1_FOLDER = Path(__file__).parent / "data" / "multitask_v1"


def test_a_folder_saved_before_task_routes_loads_with_the_same_outputs(tmp_path):
    """Format 1 (weights under `heads.`, `layer_mix.`, `private.`; written by tests/data/make_multitask_v1.py on
    the code before routes) loads with the logits it had; saved again it is the current format, and a folder
    from a newer nlptransfer is refused."""
    from safetensors.torch import load_file

    from nlptransfer.runs import MULTITASK_FILE, MULTITASK_FORMAT_VERSION, read_multitask_config

    expected = json.loads((V1_FOLDER / "expected.json").read_text())
    assert read_multitask_config(V1_FOLDER)["format_version"] == 1 < MULTITASK_FORMAT_VERSION
    assert any(key.startswith("heads.") for key in load_file(V1_FOLDER / "model.safetensors"))
    model = MultiTaskModel.from_pretrained(V1_FOLDER)
    assert list(model.layer_mix) == ["topic"] and model.private_layers == {"ner": 1}
    assert model.task_weights == {"ner": 2.0} and model.loss_weighting_name == "uncertainty"
    inputs = model.tokenizer(expected["texts"], padding=True, return_tensors="pt")

    def logits(m: MultiTaskModel) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {name: m(**inputs, task=name).logits[name] for name in m.task_names}

    loaded = logits(model)
    assert list(loaded) == list(expected["logits"]) == ["topic", "ner", "mood"]
    for name, values in expected["logits"].items():
        torch.testing.assert_close(loaded[name], torch.tensor(values), atol=1e-6, rtol=0)
    labels = [{name: row[name]["label"] for name in ("topic", "mood")} for row in model.predict(expected["texts"])]
    assert labels == [{name: row[name]["label"] for name in ("topic", "mood")} for row in expected["predictions"]]

    model.save_pretrained(tmp_path / "current")
    assert read_multitask_config(tmp_path / "current")["format_version"] == MULTITASK_FORMAT_VERSION
    keys = load_file(tmp_path / "current" / "model.safetensors").keys()
    assert {key.split(".")[0] for key in keys} == {"encoder", "routes", "loss_weighting"}
    again = logits(MultiTaskModel.from_pretrained(tmp_path / "current"))
    assert all(torch.equal(again[name], loaded[name]) for name in loaded)

    shutil.copytree(V1_FOLDER, tmp_path / "newer")
    config = json.loads((tmp_path / "newer" / MULTITASK_FILE).read_text())
    config["format_version"] = MULTITASK_FORMAT_VERSION + 1
    (tmp_path / "newer" / MULTITASK_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"newer nlptransfer \\(format {MULTITASK_FORMAT_VERSION + 1}\\)"):
        MultiTaskModel.from_pretrained(tmp_path / "newer")


def test_unknown_task_and_missing_labels_are_clear(tiny_model):
    with pytest.raises(ValueError, match="no label names"):
        MultiTaskModel.from_encoder(tiny_model, [TaskSpec(name="x", kind="classification")])
    with pytest.raises(ValueError, match="unique"):
        MultiTaskModel.from_encoder(tiny_model, [CLS, CLS])
    model = tiny_mtl(tiny_model)
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        model.predict(["a"], tasks=["nope"])


RELOAD = """
import json, sys, torch, traceback
from nlptransfer import MultiTaskModel
for folder in sys.argv[1:]:
    try:
        model = MultiTaskModel.from_pretrained(folder + "/mtl")
        out = model(**torch.load(folder + "/batch.pt"))
        print(json.dumps({name: logits.tolist() for name, logits in out.logits.items()}))
    except Exception:
        print(json.dumps({"error": traceback.format_exc()}))
"""


VARIANTS = {
    "full": (None, [], {}),
    "lora": ("shared", [], {}),
    "lora_per_task": ("per_task", [], {}),
    "full_layer_mix": (None, ["ner"], {}),
    "lora_per_task_layer_mix": ("per_task", ["ner"], {}),
    "full_private_layers": (None, [], {"ner": 1}),
}


def save_variant(tiny_model, folder: Path, adapter, layer_mix, private) -> dict:
    """A model of the variant with every trainable weight moved off its initial value (as training would), saved
    to `folder` with a mixed batch; its logits on that batch."""
    from nlptransfer.adapters import AdapterArguments, encoder_adapter_config

    model = tiny_mtl(tiny_model, layer_mix=layer_mix, private_layers=private)
    if adapter:
        model.add_adapter(
            encoder_adapter_config(AdapterArguments(peft="lora", lora_r=2), model.encoder), adapter == "per_task"
        )
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    batch = mixed_batch(model)
    batch.pop("labels")
    expected = {name: logits.tolist() for name, logits in model(**batch).logits.items()}
    model.save_pretrained(folder / "mtl")
    torch.save(batch, folder / "batch.pt")
    return expected


@pytest.fixture(scope="module")
def fresh_reloads(tiny_model, tmp_path_factory) -> dict:
    """Every variant saved, then reloaded by one fresh interpreter (it never held any of the models; one for all
    six: each interpreter costs ~10 s of imports): variant -> (its folder, its logits before saving, the
    reloaded logits or the error)."""
    root = tmp_path_factory.mktemp("fresh-reloads")
    expected = {}
    for name, variant in VARIANTS.items():
        (root / name).mkdir()
        expected[name] = save_variant(tiny_model, root / name, *variant)
    command = [sys.executable, "-c", RELOAD, *(str(root / name) for name in VARIANTS)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    reloaded = [json.loads(line) for line in done.stdout.strip().splitlines()[-len(VARIANTS) :]]
    return {name: (root / name, expected[name], out) for name, out in zip(VARIANTS, reloaded)}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_save_and_reload_in_a_fresh_process_gives_identical_outputs(variant, fresh_reloads):
    adapter, layer_mix, private = VARIANTS[variant]
    folder, expected, reloaded = fresh_reloads[variant]
    config = json.loads((folder / "mtl" / "nlptransfer_multitask.json").read_text())
    assert [t["name"] for t in config["tasks"]] == ["topic", "ner"] and config["tasks"][1]["labels"] == NER.labels
    if adapter:  # only the adapter and the heads are stored; the frozen encoder comes from base_model
        from safetensors.torch import load_file

        keys = load_file(folder / "mtl" / "model.safetensors").keys()
        assert keys and all("lora_" in k or k.startswith(("routes.", "loss_weighting.")) for k in keys)
    assert config["layer_mix"] == layer_mix and config["private_layers"] == private
    assert "error" not in reloaded, reloaded.get("error")
    for name in expected:
        torch.testing.assert_close(torch.tensor(reloaded[name]), torch.tensor(expected[name]), atol=1e-5, rtol=1e-5)


def test_predict_serves_every_task_from_one_encoder_pass(tiny_model):
    model = tiny_mtl(tiny_model)
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    texts = ["anna visited paris today .", "the good pasta"]
    out = model.predict(texts, tasks=["topic", "ner"])
    assert len(calls) == 1 and len(out) == 2
    assert out[0]["topic"]["label"] in CLS.labels and 0 < out[0]["topic"]["score"] <= 1
    for entity in out[0]["ner"]:  # spans point into the text
        assert texts[0][entity["start"] : entity["end"]] == entity["word"] and entity["entity"] in ("LOC", "PER")


def test_entity_decoding_joins_iob2_tags_into_character_spans(tiny_model):
    from nlptransfer.tasks import TASK_KINDS

    model = tiny_mtl(tiny_model)
    text = "anna met bob in paris ."
    encoding = model.tokenizer([text], return_tensors="pt")
    labels = ["O", "B-PER", "I-PER", "B-LOC"]
    spec = TaskSpec(name="ner", kind="ner", labels=labels)
    # tokens: [CLS] anna met bob in paris . [SEP]; tags: B-PER O B-PER I-PER B-LOC O
    wanted = [0, 1, 0, 1, 2, 3, 0, 0]
    logits = torch.nn.functional.one_hot(torch.tensor(wanted), 4).float() * 5
    entities = TASK_KINDS["ner"].decode(logits, spec, encoding, 0, text)
    assert [(e["entity"], e["word"]) for e in entities] == [("PER", "anna"), ("PER", "bob in"), ("LOC", "paris")]


def test_per_task_adapters_train_only_the_tasks_in_the_batch(tiny_model):
    from nlptransfer.adapters import AdapterArguments, encoder_adapter_config

    model = tiny_mtl(tiny_model)
    model.add_adapter(encoder_adapter_config(AdapterArguments(peft="lora", lora_r=2), model.encoder), per_task=True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".lora_A.topic." in n for n in names) and any(".lora_A.ner." in n for n in names)
    assert not any(n.startswith("encoder.") and "lora_" not in n for n in names)  # the encoder is frozen
    with torch.no_grad():  # LoRA B starts at zero; make each adapter change the output
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    model.eval()
    batch = mixed_batch(model)
    out = model(**batch)
    rows = (batch["task_ids"] == 1).nonzero(as_tuple=True)[0]
    alone = model(input_ids=batch["input_ids"][rows], attention_mask=batch["attention_mask"][rows], task="ner")
    torch.testing.assert_close(alone.logits["ner"], out.logits["ner"], atol=1e-5, rtol=1e-5)
    with_topic_adapter = model.predict(["anna visited paris today ."], tasks=["topic", "ner"])
    assert set(with_topic_adapter[0]) == {"topic", "ner"}

    model.train()
    only_ner = {k: v[rows] for k, v in batch.items() if k != "labels"}
    model(**only_ner, labels={"ner": batch["labels"]["ner"]}).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())  # DDP-safe: absent task's adapter gets a zero gradient
    assert all(float(g.abs().sum()) == 0 for n, g in grads.items() if ".topic." in n or n.startswith("routes.topic."))
    assert any(float(g.abs().sum()) > 0 for n, g in grads.items() if ".lora_A.ner." in n)


def test_pair_and_regression_heads_share_the_encoder(tiny_model):
    sim = TaskSpec(name="sim", kind="regression", text_pair_column="b")
    para = TaskSpec(name="para", kind="pair_classification", labels=["no", "yes"], text_pair_column="b")
    torch.manual_seed(0)
    model = MultiTaskModel.from_encoder(tiny_model, [sim, para]).eval()
    assert model.heads["sim"].out.out_features == 1 and model.heads["para"].out.out_features == 2
    pairs = [("anna met bob", "bob met anna"), ("the soup", "a robot"), ("good cake", "good bread")]
    encoding = model.tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    task_ids = torch.tensor([0, 1, 0])
    labels = {"sim": torch.tensor([0.9, 0.2]), "para": torch.tensor([0])}
    out = model(**encoding, task_ids=task_ids, labels=labels)
    torch.testing.assert_close(
        out.losses["sim"], torch.nn.functional.mse_loss(out.logits["sim"].squeeze(-1), labels["sim"])
    )
    torch.testing.assert_close(
        out.losses["para"], torch.nn.functional.cross_entropy(out.logits["para"], labels["para"])
    )
    predicted = model.predict(pairs, tasks=["sim", "para"])
    assert isinstance(predicted[0]["sim"], float) and predicted[1]["para"]["label"] in ("no", "yes")
    with pytest.raises(ValueError, match="mix sentence-pair and single-sentence"):
        MultiTaskModel.from_encoder(tiny_model, [sim, CLS]).predict(["a"], tasks=["sim", "topic"])


def test_teacher_logits_mix_into_each_task_loss_and_anneal_to_the_labels(tiny_model):
    from nlptransfer.distill.losses import kd_loss
    from nlptransfer.distill.model import MultiTaskDistillation

    model = tiny_mtl(tiny_model, task_weights={"topic": 2.0, "ner": 0.5}).eval()
    batch = mixed_batch(model)
    # collated per task: the ner task's teacher gives one row of logits per first sub-word, NaN elsewhere
    torch.manual_seed(1)
    topic_targets = torch.randn(6, 3)
    ner_targets = torch.randn(6, batch["input_ids"].shape[1], 3)
    ner_targets[batch["labels"]["ner"] == -100] = float("nan")
    teacher_logits = {"topic": topic_targets, "ner": ner_targets}
    plain = model(**batch)

    wrapped = MultiTaskDistillation(model, alpha=0.25, temperature=2.0, annealing=False)
    out = wrapped(**batch, teacher_logits=teacher_logits)
    soft = {
        "topic": kd_loss(plain.logits["topic"], topic_targets, 2.0, torch.ones(6, dtype=torch.bool)),
        "ner": kd_loss(plain.logits["ner"], ner_targets, 2.0, batch["labels"]["ner"] != -100),
    }
    expected = sum(w * (0.75 * plain.losses[t] + 0.25 * soft[t]) for t, w in (("topic", 2.0), ("ner", 0.5)))
    torch.testing.assert_close(out.loss, expected)
    only_topic = MultiTaskDistillation(model, alpha=1.0, annealing=False)(
        **batch, teacher_logits={"topic": topic_targets}
    )
    torch.testing.assert_close(
        only_topic.loss, 2.0 * kd_loss(plain.logits["topic"], topic_targets) + 0.5 * plain.losses["ner"]
    )
    assert wrapped(**{k: v for k, v in batch.items() if k != "labels"}).loss is None  # evaluation: the plain model

    annealed = MultiTaskDistillation(model, temperature=2.0)  # teacher annealing: soft weight 1 -> 0
    assert annealed.alpha == 1.0
    annealed.set_progress(1.0)
    torch.testing.assert_close(annealed(**batch, teacher_logits=teacher_logits).loss, plain.loss)
    annealed.set_progress(0.5)
    assert annealed.alpha == 0.5


def test_collator_groups_teacher_logits_per_task_and_pads_token_targets_with_nan():
    collate = MultiTaskCollator(0, ["topic", "ner"])
    features = [
        {"input_ids": [2, 5, 3], "labels": 1, "task_ids": 0, "teacher_logits": [0.1, 0.2, 0.7]},
        {
            "input_ids": [2, 6, 7, 8, 3],
            "labels": [-100, 0, 2, -100, -100],
            "task_ids": 1,
            "teacher_logits": [[float("nan")] * 3, [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]] + [[float("nan")] * 3] * 2,
        },
        {"input_ids": [2, 9, 3], "labels": 0, "task_ids": 0, "teacher_logits": [0.5, 0.4, 0.1]},
    ]
    batch = collate(features)
    assert batch["input_ids"].shape == (3, 5) and batch["labels"]["topic"].tolist() == [1, 0]
    torch.testing.assert_close(batch["teacher_logits"]["topic"], torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.4, 0.1]]))
    ner = batch["teacher_logits"]["ner"]
    assert ner.shape == (1, 5, 3) and ner[0, 1].tolist() == [1.0, 0.0, 0.0] and ner[0, 3:].isnan().all()
    assert "teacher_logits" not in collate([{k: v for k, v in f.items() if k != "teacher_logits"} for f in features])
