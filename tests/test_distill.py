"""Distillation: the losses by hand, students cut from teacher layers, teachers of every kind (plain,
LoRA, multi-task, another tokenizer), the teacher cache, and recipes/distill.py end to end."""

import json
import math
import os
import random
from pathlib import Path

import pytest
import torch

from nlptransfer import ConfigError, TaskSpec

from conftest import REPO, VOCAB, killed_at_batch, recipe_args, run_script, tiny_bert_config

RECIPE = str(REPO / "recipes" / "distill.py")
FINETUNE = str(REPO / "recipes" / "finetune.py")
# one torch thread: benchmarks share the machine, and two threads fighting over it are 100x slower
FAST = ["--learning_rate", "2e-3", "--per_device_train_batch_size", "16", "--cpu_threads", "1"]


def run(recipe: str, args: list[str]) -> dict:
    run_script(recipe, args)
    return json.loads((Path(args[args.index("--output_dir") + 1]) / "all_results.json").read_text())


def bert_config(**changes):
    """The tiny test BERT's config with some values changed."""
    config = tiny_bert_config()
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def distill_args(teacher: str, student: str, files: dict, out, *extra: str) -> list[str]:
    return recipe_args(student, files, out, "--teacher_name_or_path", teacher, *FAST, *extra)


# ---- teachers, trained once per module (cls_teacher: once per session, in conftest.py) -------------------
# selected on validation loss, not accuracy: the first checkpoint at 100% accuracy is far from confident
TEACHER = [*FAST, "--num_train_epochs", "6", "--metric_for_best_model", "loss"]


@pytest.fixture(scope="module")
def ner_teacher(tiny_model, ner_files, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("teachers") / "ner"
    results = run(FINETUNE, recipe_args(tiny_model, ner_files, out, "--task_type", "ner", *TEACHER))
    assert results["test_f1"] >= 0.9
    return str(out)


TEACHER_VOCAB = [w for w in VOCAB if w != "visited"] + ["visit", "##ed"]  # "visited" is two pieces here


@pytest.fixture(scope="module")
def other_tokenizer_model(tmp_path_factory) -> str:
    """A tiny BERT whose vocabulary holds the same words in a shuffled order, except that "visited" is
    split into "visit ##ed": ids differ everywhere and one word has another number of pieces."""
    from transformers import BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("other-tokenizer")
    words = TEACHER_VOCAB[5:]
    random.Random(0).shuffle(words)
    vocab = TEACHER_VOCAB[:5] + words
    BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(1)
    BertModel(bert_config(vocab_size=len(vocab))).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def other_tokenizer_ner_teacher(other_tokenizer_model, ner_files, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("teachers") / "ner-other-tokenizer"
    args = recipe_args(other_tokenizer_model, ner_files, out, "--task_type", "ner", *TEACHER)
    assert run(FINETUNE, args)["test_f1"] >= 0.9
    return str(out)


# ---- losses ---------------------------------------------------------------------------------
def test_kd_loss_equals_the_hand_computed_value():
    from nlptransfer.distill.losses import kd_loss

    student, teacher = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # T=1: p_t = (σ(-1), σ(1)), p_s reversed, log(p_t1/p_s1) = 1: KL = (σ(1) - σ(-1)) * 1 = tanh(1/2)
    assert kd_loss(student, teacher, 1.0).item() == pytest.approx(math.tanh(0.5), rel=1e-6)
    # T=2: logits halved, log ratio 1/2, KL = tanh(1/4) / 2, times T² = 4
    assert kd_loss(student, teacher, 2.0).item() == pytest.approx(4 * math.tanh(0.25) / 2, rel=1e-6)
    probabilities = torch.tensor([[0.2, 0.3, 0.5]])
    by_hand = (probabilities * (probabilities / torch.tensor([[1 / 3] * 3])).log()).sum()
    assert kd_loss(torch.zeros(1, 3), probabilities.log(), 1.0).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_kd_loss_scales_with_t_squared_so_its_gradient_keeps_its_size():
    from nlptransfer.distill.losses import kd_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(8, 5), torch.randn(8, 5)
    for temperature in (0.5, 2.0, 4.0):
        softened = kd_loss(student / temperature, teacher / temperature, 1.0)
        assert kd_loss(student, teacher, temperature).item() == pytest.approx(
            temperature**2 * softened.item(), rel=1e-5
        )
    norms = []
    for temperature in (8.0, 16.0):
        logits = student.clone().requires_grad_(True)
        kd_loss(logits, teacher, temperature).backward()
        norms.append(logits.grad.norm().item())
    # Hinton et al.: with T² the gradient tends to (s - t) / (C N), independent of T
    assert norms[0] == pytest.approx(norms[1], rel=0.05)


def test_kd_loss_is_zero_for_identical_logits_and_respects_the_mask():
    from nlptransfer.distill.losses import kd_loss, logit_mse

    torch.manual_seed(0)
    logits = torch.randn(2, 6, 4)
    for temperature in (1.0, 3.0):
        assert kd_loss(logits, logits.clone(), temperature).item() == pytest.approx(0.0, abs=1e-6)
    labels = torch.tensor([[-100, 1, -100, 2, 0, -100], [-100, 3, 1, -100, -100, -100]])
    mask = labels != -100
    student, teacher = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    teacher_with_nan = teacher.clone()
    teacher_with_nan[~mask] = float("nan")  # what the collator puts where the teacher made no prediction
    student_elsewhere = torch.where(mask.unsqueeze(-1), student, torch.randn(2, 6, 4) * 10)
    expected = kd_loss(student[mask], teacher[mask], 2.0)  # only the 5 labelled positions, as rows
    for loss in (kd_loss, logit_mse):
        reference = loss(student[mask], teacher[mask], 2.0)
        assert loss(student, teacher_with_nan, 2.0, mask).item() == pytest.approx(reference.item(), rel=1e-6)
        assert loss(student_elsewhere, teacher, 2.0, mask).item() == pytest.approx(reference.item(), rel=1e-6)
    assert kd_loss(student, teacher_with_nan, 2.0, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    nothing = student.clone().requires_grad_(True)
    empty = kd_loss(nothing, teacher_with_nan, 2.0, torch.zeros_like(mask))
    empty.backward()
    assert empty.item() == 0.0 and torch.equal(nothing.grad, torch.zeros_like(nothing))


def test_hidden_and_attention_losses_and_the_layer_map():
    from nlptransfer.distill.losses import HIDDEN_LOSSES, attention_kl, parse_layer_map

    torch.manual_seed(0)
    states, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    for loss in HIDDEN_LOSSES.values():
        assert loss(states, states.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)
        noisy = states + torch.randn(2, 5, 8) * torch.tensor([0.0, 1.0])[mask.long()].unsqueeze(-1)
        assert loss(noisy, states, mask).item() > 0.01
    attention = torch.randn(2, 4, 5, 5).softmax(-1)
    assert attention_kl(attention, attention.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_kl(torch.randn(2, 2, 5, 5).softmax(-1), attention, mask).item() > 0  # other head count
    assert parse_layer_map("auto", 3, 6) == [(1, 2), (2, 4), (3, 6)]
    assert parse_layer_map("auto", 2, 6) == [(1, 3), (2, 6)]
    assert parse_layer_map("0:0,2:5", 2, 6) == [(0, 0), (2, 5)]
    with pytest.raises(ConfigError, match="out of range; the student has layers 0-2 and the teacher 0-6"):
        parse_layer_map("3:6", 2, 6)
    with pytest.raises(ConfigError, match="expected 'auto' or pairs"):
        parse_layer_map("1-2", 2, 6)


# ---- students -------------------------------------------------------------------------------
def test_student_from_teacher_copies_the_chosen_layers_exactly():
    from transformers import BertForSequenceClassification, MPNetConfig, MPNetForTokenClassification

    from nlptransfer.distill import student_from_teacher

    torch.manual_seed(0)
    teacher = BertForSequenceClassification(bert_config(num_hidden_layers=4, num_labels=3))
    student = student_from_teacher(teacher, [0, 2])
    assert type(student) is BertForSequenceClassification and student.config.num_hidden_layers == 2
    assert teacher.config.num_hidden_layers == 4  # the teacher's config is left alone
    t, s = teacher.state_dict(), student.state_dict()
    for key, value in s.items():
        source = key.replace("layer.1.", "layer.2.")  # student layer 1 is teacher layer 2; layer 0 stays 0
        assert torch.equal(value, t[source]), key
    assert not any(key.startswith("bert.encoder.layer.2.") for key in s)
    teacher.eval(), student.eval()
    inputs = {"input_ids": torch.tensor([[2, 7, 9, 3]])}
    same_layers = student_from_teacher(teacher, [0, 1, 2, 3]).eval()
    assert torch.allclose(same_layers(**inputs).logits, teacher(**inputs).logits)

    # another architecture (MPNet: relative attention bias outside the layers) through the same path
    mpnet = MPNetForTokenClassification(
        MPNetConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=20)
    )
    small = student_from_teacher(mpnet, [2])
    assert torch.equal(
        small.mpnet.encoder.layer[0].attention.attn.q.weight, mpnet.mpnet.encoder.layer[2].attention.attn.q.weight
    )
    assert torch.equal(
        small.mpnet.encoder.relative_attention_bias.weight, mpnet.mpnet.encoder.relative_attention_bias.weight
    )
    with pytest.raises(ConfigError, match=r"the teacher has layers 0-3; out of range: 4"):
        student_from_teacher(teacher, [0, 4])


def test_a_multitask_head_becomes_a_plain_task_model_with_the_same_outputs(tiny_model):
    from nlptransfer import MultiTaskModel
    from nlptransfer.distill import student_from_teacher, task_model_from_multitask

    tasks = [
        TaskSpec(name="topic", kind="classification", labels=["food", "sport", "tech"]),
        TaskSpec(name="people", kind="ner", labels=["O", "B-LOC", "B-PER"]),
    ]
    model = MultiTaskModel.from_encoder(tiny_model, tasks).eval()
    inputs = {"input_ids": torch.tensor([[2, 30, 45, 31, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    for name in ("topic", "people"):
        single = task_model_from_multitask(model, name)
        assert torch.allclose(single(**inputs).logits, model(**inputs, task=name).logits[name], atol=1e-6)
        assert single.config.id2label == dict(enumerate(model.tasks[name].labels))
    cut = student_from_teacher(model, [1])  # a multi-task student keeps every head
    assert cut.task_names == ["topic", "people"] and cut.encoder.config.num_hidden_layers == 1
    assert torch.equal(cut.heads["people"].out.weight, model.heads["people"].out.weight)


def test_a_multitask_teacher_whose_head_mixes_layers(tiny_model):
    """A layer-mix head: the teacher's feature path gives the model's logits, a cut student keeps the mix
    weights of the embeddings and of its layers, and there is no plain task model to make of it."""
    from nlptransfer import MultiTaskModel
    from nlptransfer.distill import Teacher, student_from_teacher, task_model_from_multitask

    tasks = [
        TaskSpec(name="topic", kind="classification", labels=["food", "sport", "tech"]),
        TaskSpec(name="people", kind="ner", labels=["O", "B-LOC", "B-PER"]),
    ]
    model = MultiTaskModel.from_encoder(tiny_model, tasks, layer_mix=["people"]).eval()
    with torch.no_grad():
        model.layer_mix["people"].weights.copy_(torch.tensor([0.5, -1.0, 2.0]))
    inputs = {"input_ids": torch.tensor([[2, 30, 45, 31, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    teacher = Teacher(model, model.tokenizer, model.tasks["people"], path="mtl", source="multitask", task="people")
    for flags in ({}, {"attentions": True}, {"hidden_states": True}):
        out = teacher(inputs, **flags)
        torch.testing.assert_close(out.logits, model(**inputs, task="people").logits["people"])
        assert (out.hidden_states is None) == ("hidden_states" not in flags)
    cut = student_from_teacher(model, [1])
    assert cut.layer_mix["people"].weights.tolist() == [0.5, 2.0]
    with pytest.raises(ConfigError, match="'people' reads a mix of the encoder's layers"):
        task_model_from_multitask(model, "people")


def test_a_task_with_private_layers_becomes_a_plain_task_model_with_its_own_top_layers(tiny_model):
    from nlptransfer import MultiTaskModel
    from nlptransfer.distill import Teacher, student_from_teacher, task_model_from_multitask

    tasks = [
        TaskSpec(name="topic", kind="classification", labels=["food", "sport", "tech"]),
        TaskSpec(name="people", kind="ner", labels=["O", "B-LOC", "B-PER"]),
    ]
    model = MultiTaskModel.from_encoder(tiny_model, tasks, private_layers={"people": 1}).eval()
    with torch.no_grad():
        for p in model.private["people"].parameters():
            p.add_(torch.randn_like(p) * 0.05)
    inputs = {"input_ids": torch.tensor([[2, 30, 45, 31, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    for name in ("topic", "people"):
        single = task_model_from_multitask(model, name)
        torch.testing.assert_close(single(**inputs).logits, model(**inputs, task=name).logits[name])
    teacher = Teacher(model, model.tokenizer, model.tasks["people"], path="mtl", source="multitask", task="people")
    out = teacher(inputs, hidden_states=True)
    torch.testing.assert_close(out.logits, model(**inputs, task="people").logits["people"])
    with pytest.raises(ConfigError, match="adapters or private layers"):
        student_from_teacher(model, [1])


def test_hidden_state_matching_trains_a_projection_when_widths_differ(tiny_model, cls_teacher):
    from transformers import BertForSequenceClassification

    from nlptransfer.distill import load_teacher
    from nlptransfer.distill.model import DistillationModel

    teacher = load_teacher(cls_teacher)
    torch.manual_seed(0)
    narrow = BertForSequenceClassification(bert_config(hidden_size=16, intermediate_size=20, num_labels=3))
    model = DistillationModel(
        narrow,
        alpha=0.5,
        teacher=teacher,
        hidden_loss="mse",
        hidden_weight=1.0,
        attention_weight=1.0,
        layer_map=[(1, 1), (2, 2)],
    )
    assert sorted(model.projections) == ["1", "2"] and model.projections["1"].weight.shape == (32, 16)
    batch = {
        "input_ids": torch.tensor([[2, 30, 45, 31, 3], [2, 12, 40, 3, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]),
        "labels": torch.tensor([1, 2]),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    first = model(**batch)
    assert {"gold_loss", "soft_loss", "hidden_loss", "attention_loss"} <= {k for k, v in first.items() if v is not None}
    for _ in range(30):
        out = model(**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert out.hidden_loss < 0.5 * first.hidden_loss and out.attention_loss < first.attention_loss
    assert not teacher.model.training and all(not p.requires_grad for p in teacher.model.parameters())
    assert not any(key.startswith("_teacher") or "teacher" in key for key in model.state_dict())
    assert model(input_ids=batch["input_ids"]).logits.shape == (2, 3)  # no labels: the plain student


def test_collator_pads_token_targets_with_nan_and_a_regression_student_matches_logits():
    from transformers import BertForSequenceClassification

    from nlptransfer.distill import DistillArguments
    from nlptransfer.distill.model import DistillationModel, DistillCollator

    features = [
        {"input_ids": [2, 7, 3], "labels": [-100, 1, -100], "teacher_logits": [[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]]},
        {"input_ids": [2, 3], "labels": [-100, -100], "teacher_logits": [[float("nan")] * 2] * 2},
    ]
    batch = DistillCollator(pad_token_id=0)(features)
    assert batch["teacher_logits"].shape == (2, 3, 2) and batch["teacher_logits"][1].isnan().all()
    assert batch["input_ids"].tolist() == [[2, 7, 3], [2, 3, 0]] and "teacher_logits" not in DistillCollator(0)(
        [{"input_ids": [2, 3]}]
    )

    assert DistillArguments(teacher_name_or_path="t").kd_loss_for("regression") == "mse"
    assert DistillArguments(teacher_name_or_path="t").kd_loss_for("ner") == "kl"
    torch.manual_seed(0)
    student = BertForSequenceClassification(bert_config(num_labels=1, problem_type="regression"))
    model = DistillationModel(student, alpha=1.0, kd_loss="mse")
    inputs = {"input_ids": torch.tensor([[2, 7, 3], [2, 9, 3]]), "labels": torch.tensor([0.5, 1.0])}
    with pytest.raises(ValueError, match="alpha > 0 needs teacher_logits"):  # refused, not silently zero
        model(**inputs)
    model.eval()  # dropout off: the same logits twice
    logits = model(input_ids=inputs["input_ids"]).logits.detach()  # no labels: the plain student
    out = model(**inputs, teacher_logits=logits + 2.0)
    assert logits.shape == (2, 1) and out.soft_loss.item() == pytest.approx(4.0, rel=1e-5)
    assert out.loss.item() == pytest.approx(4.0, rel=1e-5)  # alpha=1: the gold loss weighs nothing


# ---- the recipe -----------------------------------------------------------------------------
def test_pure_distillation_learns_from_the_teacher_alone(tiny_model, cls_teacher, cls_files, tmp_path):
    from transformers import pipeline

    # shuffled training labels: with alpha=1 only the teacher's soft targets can teach the task
    rows = [json.loads(line) for line in Path(cls_files["train"]).read_text().splitlines()]
    labels = [row["label"] for row in rows]
    random.Random(0).shuffle(labels)
    noisy = dict(cls_files, train=str(tmp_path / "noisy.jsonl"))
    Path(noisy["train"]).write_text("".join(json.dumps({**r, "label": y}) + "\n" for r, y in zip(rows, labels)))

    out = tmp_path / "student"
    results = run(
        RECIPE,
        distill_args(
            cls_teacher,
            tiny_model,
            noisy,
            out,
            "--alpha",
            "1",
            "--temperature",
            "1",
            "--num_train_epochs",
            "6",
            # fp32: this tiny student's logits end up a few thousandths apart, so bf16-rounded evaluation and the
            # fp32 pipeline below could disagree on which class wins (real models have margins far above that)
            "--mixed_precision",
            "no",
        ),
    )
    assert results["teacher_targets"] == "written" and results["teacher_source"] == "model"
    assert results["test_accuracy"] >= 0.8  # chance is 1/3, and the labels it saw are noise
    # the saved student, reloaded by a plain transformers pipeline, classifies the test set as well
    test_rows = [json.loads(line) for line in Path(cls_files["test"]).read_text().splitlines()]
    classify = pipeline("text-classification", model=str(out), device="cpu")
    predicted = [p["label"] for p in classify([row["text"] for row in test_rows])]
    assert sum(p == row["label"] for p, row in zip(predicted, test_rows)) / len(test_rows) >= 0.8

    labels_only = run(
        RECIPE, distill_args(cls_teacher, tiny_model, noisy, tmp_path / "b", "--alpha", "0", "--num_train_epochs", "6")
    )
    assert labels_only["teacher_targets"] == "none" and labels_only["test_accuracy"] < 0.7


def test_teacher_cache_is_written_once_and_reused(tiny_model, cls_teacher, cls_files, tmp_path, monkeypatch):
    import nlptransfer.distill.targets as teacher_targets

    cache = tmp_path / "cache"
    common = ["--student_layers", "1", "--max_steps", "4", "--teacher_cache_dir", str(cache)]
    first = run(RECIPE, distill_args(cls_teacher, tiny_model, cls_files, tmp_path / "a", *common))
    assert first["teacher_targets"] == "written" and first["student_layers"] == 1
    (written,) = cache.glob("teacher_*.safetensors")
    stamp = written.stat().st_mtime_ns

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran again although its outputs are cached")

    monkeypatch.setattr(teacher_targets, "compute_teacher_targets", no_teacher)
    second = run(
        RECIPE, distill_args(cls_teacher, tiny_model, cls_files, tmp_path / "b", *common, "--temperature", "4")
    )
    assert second["teacher_targets"] == "hit" and written.stat().st_mtime_ns == stamp
    assert list(cache.iterdir()) == [written]
    # other rows are another key: computed anew (which the patched teacher refuses)
    with pytest.raises(AssertionError, match="the teacher ran again"):
        run(
            RECIPE,
            distill_args(cls_teacher, tiny_model, cls_files, tmp_path / "c", *common, "--max_train_samples", "100"),
        )


def test_teacher_with_another_tokenizer_gives_one_target_per_word(
    tiny_model, other_tokenizer_ner_teacher, ner_files, tmp_path
):
    from transformers import AutoTokenizer

    from nlptransfer import encode_splits, read_file
    from nlptransfer.distill import load_teacher, same_vocabulary
    from nlptransfer.distill.targets import compute_teacher_targets

    teacher = load_teacher(other_tokenizer_ner_teacher)
    student_tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert not same_vocabulary(teacher.tokenizer, student_tokenizer)
    assert teacher.tokenizer.tokenize("visited") == ["visit", "##ed"] and student_tokenizer.tokenize("visited") == [
        "visited"
    ]
    records = read_file(ner_files["test"])
    spec = TaskSpec(kind="ner")
    teacher.check_task(spec)
    targets = compute_teacher_targets(teacher, records, spec, max_length=32)
    assert len(targets) == len(records)
    for row, record in enumerate(records.rows):
        assert targets.of_row(row).shape == (len(record["tokens"]), 3)  # one row per word, whatever the pieces
    assert not targets.logits.isnan().any()
    # word j's target is the teacher's logits at the first piece of word j
    encoding = teacher.tokenizer(records.rows[0]["tokens"], is_split_into_words=True, return_tensors="pt")
    logits = teacher.model(**encoding).logits[0]
    firsts = [encoding.word_ids().index(word) for word in range(len(records.rows[0]["tokens"]))]
    assert torch.allclose(targets.of_row(0), logits[firsts], atol=1e-5)
    # on the student's side: each word's target at the student's first piece of it
    encoded = encode_splits({"test": records}, spec, student_tokenizer, 32)["test"]
    feature = targets.attach(encoded)[0]
    positions = [j for j, label in enumerate(feature["labels"]) if label != -100]
    assert torch.allclose(torch.from_numpy(feature["teacher_logits"][positions]), targets.of_row(0))
    assert torch.from_numpy(feature["teacher_logits"]).isnan().any(-1).sum() == len(feature["input_ids"]) - len(
        positions
    )

    results = run(
        RECIPE,
        distill_args(
            other_tokenizer_ner_teacher,
            tiny_model,
            ner_files,
            tmp_path / "s",
            "--task_type",
            "ner",
            "--alpha",
            "0.9",
            "--num_train_epochs",
            "6",
        ),
    )
    assert results["teacher_targets"] == "written" and results["test_f1"] >= 0.8


def test_multitask_and_lora_teachers(tiny_model, cls_files, ner_files, tmp_path):
    import yaml

    from test_mtl_recipe import mtl_config

    config = mtl_config(tmp_path, tiny_model, cls_files, ner_files, num_train_epochs=4, cpu_threads=1)
    run_script(str(REPO / "recipes" / "mtl.py"), ["--config", str(config)])
    teacher = str(tmp_path / "mtl")
    with pytest.raises(ConfigError, match=r"multi-task model with tasks \['topic', 'people'\]; pick .* --teacher_task"):
        run(RECIPE, distill_args(teacher, tiny_model, ner_files, tmp_path / "x", "--task_type", "ner"))
    results = run(
        RECIPE,
        distill_args(
            teacher,
            tiny_model,
            ner_files,
            tmp_path / "people",
            "--task_type",
            "ner",
            "--teacher_task",
            "people",
            "--student_layers",
            "0",
            "--alpha",
            "0.9",
            "--num_train_epochs",
            "3",
        ),
    )
    assert results["teacher_source"] == "multitask" and results["student_layers"] == 1
    assert results["test_f1"] >= 0.8
    assert yaml.safe_load((tmp_path / "people" / "run_config.yaml").read_text())["teacher_task"] == "people"

    lora = tmp_path / "lora"
    run(FINETUNE, recipe_args(tiny_model, cls_files, lora, *FAST, "--peft", "lora", "--max_steps", "6"))
    results = run(
        RECIPE,
        distill_args(
            str(lora), tiny_model, cls_files, tmp_path / "from-lora", "--student_layers", "0,1", "--max_steps", "4"
        ),
    )
    assert results["teacher_source"] == "adapter" and results["teacher_targets"] == "written"


def test_hidden_and_attention_matching_run_with_a_live_teacher(tiny_model, cls_teacher, cls_files, tmp_path):
    extra = ["--student_layers", "1", "--hidden_loss", "cosine", "--attention_weight", "1", "--num_train_epochs", "2"]
    results = run(RECIPE, distill_args(cls_teacher, tiny_model, cls_files, tmp_path / "live", *extra))
    assert results["teacher_targets"] == "live" and results["test_accuracy"] >= 0.8
    assert not list((tmp_path / "live").glob("teacher_cache"))


def test_kill_and_resume_matches_uninterrupted_run(tiny_model, ner_teacher, ner_files, tmp_path):
    from safetensors.torch import load_file

    common = ["--task_type", "ner", "--student_layers", "0", "--max_steps", "12", "--checkpointing_steps", "5"]
    full = run(RECIPE, distill_args(ner_teacher, tiny_model, ner_files, tmp_path / "full", *common))
    out = tmp_path / "killed"
    with killed_at_batch(8):
        run(RECIPE, distill_args(ner_teacher, tiny_model, ner_files, out, *common))
    resumed = run(
        RECIPE, distill_args(ner_teacher, tiny_model, ner_files, out, *common, "--resume_from_checkpoint", "latest")
    )
    assert resumed["teacher_targets"] == "hit"  # the killed run's cache in its output_dir
    for key in ("test_f1", "test_loss", "eval_f1", "eval_loss"):
        assert resumed[key] == full[key], key
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def narrow_model(tmp_path_factory) -> str:
    """The tiny BERT's vocabulary with hidden size 16 instead of 32: hidden states need a projection."""
    from transformers import BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("narrow")
    BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)}).save_pretrained(folder)
    torch.manual_seed(2)
    BertModel(bert_config(hidden_size=16, intermediate_size=20)).save_pretrained(folder)
    return str(folder)


@pytest.mark.distributed
def test_two_processes_share_the_cache_and_train_the_projections_in_sync(
    narrow_model, cls_teacher, cls_files, tmp_path
):
    from conftest import launch

    common = ["--per_device_train_batch_size", "8", "--num_train_epochs", "4", "--temperature", "1"]
    out = tmp_path / "cached"
    done = launch("distill.py", distill_args(cls_teacher, narrow_model, cls_files, out, *common))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_num_processes"] == 2 and results["teacher_targets"] == "written"
    assert results["parameters_in_sync"] is True and results["test_samples"] == 48
    assert results["test_accuracy"] >= 0.8
    assert len(list((out / "teacher_cache").iterdir())) == 1

    out = tmp_path / "live"
    extra = ["--hidden_loss", "mse", "--max_steps", "6"]  # 16 -> 32 wide: projections train under DDP
    done = launch("distill.py", distill_args(cls_teacher, narrow_model, cls_files, out, *common, *extra))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["teacher_targets"] == "live" and results["parameters_in_sync"] is True


# ---- clear errors ---------------------------------------------------------------------------
def test_bad_input_gives_clear_errors(tiny_model, cls_teacher, ner_teacher, other_tokenizer_model, cls_files, tmp_path):
    from nlptransfer.distill import DistillArguments

    def fails(match: str, teacher: str, *extra: str, model: str = tiny_model) -> None:
        with pytest.raises(ConfigError, match=match):
            run(RECIPE, distill_args(teacher, model, cls_files, tmp_path / f"run{len(os.listdir(tmp_path))}", *extra))

    fails(r"--teacher_name_or_path .*nowhere: no such folder", str(tmp_path / "nowhere"))
    fails(r"--student_layers 0,2: the teacher has layers 0-1; out of range: 2", cls_teacher, "--student_layers", "0,2")
    fails(r"need the teacher's tokenizer", cls_teacher, "--hidden_loss", "mse", model=other_tokenizer_model)
    fails(r"is a ner model but --task_type is classification", ner_teacher)
    fails(r"--teacher_task 'x': teacher .* is a single-task model", cls_teacher, "--teacher_task", "x")
    fails(r"the folder holds no model", str(tmp_path))
    fails(r"--layer_map \[\(0, 0\)\] pairs no layers", cls_teacher, "--attention_weight", "1", "--layer_map", "0:0")
    for bad, match in (
        ({"alpha": 1.5}, r"--alpha must be in \[0, 1\]"),
        ({"temperature": 0}, "--temperature must be > 0"),
        ({"hidden_loss": "l1"}, r"--hidden_loss 'l1' is not one of \['none', 'cosine', 'mse'\]"),
        ({"student_layers": "0,0"}, "a layer may be taken once"),
        ({"student_layers": "first"}, "expected 0-based layer numbers"),
        ({"layer_map": "1;2"}, "expected 'auto' or pairs"),
        ({"teacher_name_or_path": None}, "give --teacher_name_or_path"),
        ({"transfer_file": "x.jsonl", "alpha": 0}, "--transfer_file rows have no labels"),
        ({"transfer_file": "x.jsonl", "hidden_loss": "mse"}, "--transfer_file rows have no labels"),
        ({"transfer_file": "x.jsonl", "max_transfer_samples": 0}, "--max_transfer_samples must be at least 1"),
    ):
        with pytest.raises(ConfigError, match=match):
            DistillArguments(**{"teacher_name_or_path": "runs/x", **bad})


# ---- transfer sets: unlabelled text the teacher labels ----------------------------------------
def test_transfer_set_rows_in_the_task_columns_and_clear_errors(tmp_path):
    from nlptransfer.batching import without_labels
    from nlptransfer.distill.targets import read_transfer_set
    from nlptransfer.readers import DataError

    ner = TaskSpec(name="t", kind="ner", labels=["O", "B-PER"])
    texts = tmp_path / "news.jsonl"
    texts.write_text(
        json.dumps({"text": "U.S. troops met Anna's team in Paris-Nord today."})
        + "\n"
        + json.dumps({"text": "  "})
        + "\n"  # empty: skipped
        + json.dumps({"tokens": ["Bob", "met", "Chen"]})
        + "\n"  # words given: kept as they are
    )
    rows = read_transfer_set(str(texts), ner)
    assert rows.rows == [
        {
            "tokens": ["U.S.", "troops", "met", "Anna's", "team", "in", "Paris-Nord", "today", "."],
            "ner_tags": ["O"] * 9,
        },
        {"tokens": ["Bob", "met", "Chen"], "ner_tags": ["O"] * 3},
    ]
    assert rows.lines == [1, 3] and len(read_transfer_set(str(texts), ner, limit=1)) == 1

    pairs = TaskSpec(name="t", kind="classification", labels=["no", "yes"], text_pair_column="text_b")
    rows = read_transfer_set(str(_jsonl(tmp_path / "pairs.jsonl", [{"text": "a", "text_b": "b", "id": 1}])), pairs)
    assert rows.rows == [{"text": "a", "text_b": "b", "label": "no"}]
    with pytest.raises(DataError, match=r"pairs2.jsonl:2: a transfer row needs field\(s\) \['text_b'\]"):
        read_transfer_set(str(_jsonl(tmp_path / "pairs2.jsonl", [{"text": "a", "text_b": "b"}, {"text": "c"}])), pairs)
    with pytest.raises(DataError, match=r"words.jsonl:1: a transfer row needs a word list 'tokens' or a text 'text'"):
        read_transfer_set(str(_jsonl(tmp_path / "words.jsonl", [{"sentence": "x"}])), ner)
    with pytest.raises(ConfigError, match="a regression task has no soft targets"):
        read_transfer_set(str(texts), TaskSpec(name="t", kind="regression"))

    features = [{"input_ids": [2, 7, 3], "labels": [-100, 0, -100]}, {"input_ids": [2, 3], "labels": 1}]
    assert [f["labels"] for f in without_labels(features)] == [[-100, -100, -100], -100]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_batch_of_transfer_rows_alone_has_a_finite_loss_from_the_soft_targets(tiny_model):
    from transformers import AutoModelForTokenClassification

    from nlptransfer.distill.losses import kd_loss
    from nlptransfer.distill.model import DistillationModel

    student = AutoModelForTokenClassification.from_pretrained(tiny_model, num_labels=3)
    model = DistillationModel(student, alpha=0.5, temperature=2.0)
    ids = torch.tensor([[2, 9, 10, 3]])
    teacher_logits = torch.full((1, 4, 3), float("nan"))
    teacher_logits[0, 1:3] = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    out = model(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        labels=torch.full_like(ids, -100),
        teacher_logits=teacher_logits,
    )
    assert out.gold_loss.item() == 0.0 and torch.isfinite(out.loss)
    expected = kd_loss(out.logits, teacher_logits, 2.0, ~teacher_logits.isnan().any(-1))
    assert torch.allclose(out.loss, 0.5 * expected)
    out.loss.backward()
    assert student.classifier.weight.grad.abs().sum() > 0


def test_a_transfer_set_teaches_a_student_that_saw_few_labels(tiny_model, cls_teacher, cls_files, tmp_path):
    # 12 labelled rows; the other training texts, without their labels, as the transfer set
    rows = [json.loads(line) for line in Path(cls_files["train"]).read_text().splitlines()]
    texts = _jsonl(tmp_path / "texts.jsonl", [{"text": row["text"]} for row in rows[12:]])
    # the student is the untrained tiny BERT (a student cut from the teacher would start out knowing the task)
    common = ["--max_train_samples", "12", "--max_steps", "150", "--mixed_precision", "no"]
    alone = run(RECIPE, distill_args(cls_teacher, tiny_model, cls_files, tmp_path / "alone", *common))
    taught = run(
        RECIPE,
        distill_args(cls_teacher, tiny_model, cls_files, tmp_path / "taught", *common, "--transfer_file", str(texts)),
    )
    assert alone["transfer_rows"] == 0 and taught["transfer_rows"] == len(rows) - 12
    assert taught["test_accuracy"] >= 0.8, taught
    assert taught["test_accuracy"] >= alone["test_accuracy"] + 0.1, (alone["test_accuracy"], taught["test_accuracy"])


def test_ner_transfer_text_is_split_into_words_and_labelled_by_the_teacher(
    tiny_model, ner_teacher, ner_files, tmp_path
):
    rows = [json.loads(line) for line in Path(ner_files["train"]).read_text().splitlines()]
    texts = _jsonl(tmp_path / "texts.jsonl", [{"text": " ".join(row["tokens"])} for row in rows[8:]])
    results = run(
        RECIPE,
        distill_args(
            ner_teacher,
            tiny_model,
            ner_files,
            tmp_path / "ner",
            "--task_type",
            "ner",
            "--max_train_samples",
            "8",
            "--max_steps",
            "60",
            "--transfer_file",
            str(texts),
            "--max_transfer_samples",
            "200",
        ),
    )
    assert results["transfer_rows"] == 200 and results["teacher_targets"] == "written"
    assert results["test_f1"] >= 0.8, results
