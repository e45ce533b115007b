"""Meta-learning: the class split, episodes, FOMAML and Reptile updates, learning on held-out classes,
the recipe end to end (its folder starts a fine-tuning run), and the flags' errors."""

import json
import random

import pytest
import torch

from nlptransfer import ConfigError, ModelArguments, RunArguments, parse_args, read_file
from nlptransfer.meta import (
    META_ALGORITHMS,
    EpisodeLearner,
    MetaArguments,
    episode_accuracy,
    prototype_accuracy,
)
from nlptransfer.meta.episodes import ClassPool, EpisodeSampler, mean_ci95, split_classes, split_meta_classes
from nlptransfer.runs import META_FILE

from conftest import REPO, make_classification_rows, recipe_args, run_script, tiny_bert_config, write_jsonl

# Keyword classes: a text is one class keyword among filler words. Held-out classes have keywords the
# encoder never saw in meta-training; what transfers is learning to ignore the fillers.
KEYWORDS = [f"kw{i}" for i in range(24)]
FILLERS = [f"f{i}" for i in range(40)]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *KEYWORDS, *FILLERS]


def keyword_rows(per_class: int, seed: int, fillers: int = 6) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for keyword in KEYWORDS:
        for _ in range(per_class):
            words = [keyword, *rng.sample(FILLERS, fillers)]
            rows.append({"text": " ".join(words), "topic": keyword})
    return rows


@pytest.fixture(scope="module")
def keyword_model(tmp_path_factory) -> str:
    from transformers import BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("keyword-bert")
    BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)}).save_pretrained(folder)
    config = tiny_bert_config(vocab_size=len(VOCAB), max_position_embeddings=32)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def keyword_file(tmp_path_factory) -> str:
    return str(write_jsonl(tmp_path_factory.mktemp("keywords") / "train.jsonl", keyword_rows(12, seed=0)))


def load_learner(model: str, data: str, **options) -> EpisodeLearner:
    from transformers import AutoModel, AutoTokenizer

    pool = ClassPool.from_records(read_file(data), AutoTokenizer.from_pretrained(model), 16, label_column="topic")
    return EpisodeLearner(AutoModel.from_pretrained(model), pool, **options)


def test_split_classes_is_disjoint_complete_and_seeded():
    classes = [f"class{i}" for i in range(50)]
    train, test = split_classes(classes, 0.4, seed=0)
    assert len(test) == 20 and len(train) == 30
    assert not set(train) & set(test) and set(train) | set(test) == set(classes)
    assert split_classes(list(reversed(classes)), 0.4, seed=0) == (train, test)  # input order does not matter
    assert split_classes(classes, 0.4, seed=1)[1] != test
    assert len(split_classes(classes, 7, seed=0)[1]) == 7
    for bad in (0, 1.5, 50, -3):
        with pytest.raises(ConfigError, match="--meta_test_classes"):
            split_classes(classes, bad, seed=0)


def test_split_meta_classes_holds_out_a_validation_group_and_keeps_the_test_group():
    classes = [f"class{i}" for i in range(50)]
    train, validation, test = split_meta_classes(classes, 0.4, 10, seed=0)
    assert test == split_classes(classes, 0.4, seed=0)[1]  # the same meta-test classes as without validation
    assert len(validation) == 10 and len(train) == 20
    assert not (set(train) & set(validation)) and not (set(validation) & set(test))
    assert set(train) | set(validation) | set(test) == set(classes)
    assert split_meta_classes(classes, 0.4, 0, seed=0) == (*split_classes(classes, 0.4, seed=0)[:1], [], test)
    with pytest.raises(ConfigError, match="--meta_val_classes"):
        split_meta_classes(classes, 0.4, 30, seed=0)  # nothing left to meta-train on


def test_episodes_are_replayable_and_well_formed():
    rows = iter(range(1000))
    class_rows = {f"c{i}": [next(rows) for _ in range(n)] for i, n in enumerate([12, 30, 8, 15, 40, 11, 3, 20])}
    sampler = EpisodeSampler(class_rows, n_way=5, k_shot=5, query=4, seed=3)
    assert sampler.skipped == ["c2", "c6"]  # 8 and 3 rows < 5 + 4
    orders = set()
    for index in range(30):
        episode = sampler.episode(index)
        assert episode == EpisodeSampler(class_rows, 5, 5, 4, seed=3).episode(index)  # a pure function
        assert len(set(episode.classes)) == 5 and not set(episode.classes) & {"c2", "c6"}
        assert not set(episode.support) & set(episode.query)
        assert len(set(episode.support)) == 25 and len(set(episode.query)) == 20
        for label, name in enumerate(episode.classes):
            support = [r for r, y in zip(episode.support, episode.support_labels) if y == label]
            query = [r for r, y in zip(episode.query, episode.query_labels) if y == label]
            assert len(support) == 5 and len(query) == 4
            assert set(support + query) <= set(class_rows[name])
        orders.add(episode.classes)
    assert len(orders) > 20  # labels 0..N-1 go to classes in a random order
    assert EpisodeSampler(class_rows, 5, 5, 4, seed=4).episode(0) != sampler.episode(0)
    with pytest.raises(ConfigError, match="--n_way 7"):
        EpisodeSampler(class_rows, n_way=7, k_shot=5, query=4)


def test_mean_ci95():
    mean, ci = mean_ci95([0.2, 0.4, 0.6, 0.8])
    assert mean == pytest.approx(0.5)
    assert ci == pytest.approx(1.96 * (0.2 * (5 / 3) ** 0.5) / 2)


def test_prototype_head_without_steps_is_the_prototype_classifier(keyword_model, keyword_file):
    learner = load_learner(keyword_model, keyword_file)
    sampler = EpisodeSampler(learner.pool.class_rows, 5, 3, 4, seed=0)
    for index in range(5):
        episode = sampler.episode(index)
        assert episode_accuracy(learner, episode, steps=0, lr=1e-3) == prototype_accuracy(learner, episode)


def test_episode_accuracy_restores_the_weights(keyword_model, keyword_file):
    learner = load_learner(keyword_model, keyword_file)
    before = learner.snapshot()
    episode = EpisodeSampler(learner.pool.class_rows, 5, 3, 4, seed=0).episode(0)
    episode_accuracy(learner, episode, steps=3, lr=1e-2)
    assert all(torch.equal(a, b) for a, b in zip(before, learner.snapshot()))


def adapted_weights(learner: EpisodeLearner, episode, steps: int, lr: float) -> list[torch.Tensor]:
    start = learner.snapshot()
    learner.adapt(episode, steps, lr)
    adapted = learner.snapshot()
    learner.restore(start)
    return adapted


def test_reptile_moves_the_meta_weights_towards_the_adapted_weights(keyword_model, keyword_file):
    learner = load_learner(keyword_model, keyword_file)
    episode = EpisodeSampler(learner.pool.class_rows, 5, 3, 4, seed=0).episode(0)
    meta = learner.snapshot()
    adapted = adapted_weights(learner, episode.merged(), steps=3, lr=1e-2)  # Reptile trains on all rows
    assert any(not torch.allclose(a, m) for a, m in zip(adapted, meta))

    META_ALGORITHMS["reptile"](learner, inner_steps=3, inner_lr=1e-2, outer_lr=0.0).step([episode])
    assert all(torch.equal(p, m) for p, m in zip(learner.snapshot(), meta))  # outer_lr 0: nothing moves
    META_ALGORITHMS["reptile"](learner, inner_steps=3, inner_lr=1e-2, outer_lr=1.0).step([episode])
    for p, a in zip(learner.snapshot(), adapted):
        torch.testing.assert_close(p, a)  # outer_lr 1, one episode: the adapted weights themselves
    learner.restore(meta)
    META_ALGORITHMS["reptile"](learner, inner_steps=3, inner_lr=1e-2, outer_lr=0.25).step([episode])
    for p, m, a in zip(learner.snapshot(), meta, adapted):
        torch.testing.assert_close(p, m + 0.25 * (a - m))

    learner.restore(meta)
    other = EpisodeSampler(learner.pool.class_rows, 5, 3, 4, seed=0).episode(1)
    adapted_other = adapted_weights(learner, other.merged(), steps=3, lr=1e-2)
    META_ALGORITHMS["reptile"](learner, inner_steps=3, inner_lr=1e-2, outer_lr=0.5).step([episode, other])
    for p, m, a, b in zip(learner.snapshot(), meta, adapted, adapted_other):
        torch.testing.assert_close(p, m + 0.5 * ((a + b) / 2 - m))  # the mean over the meta-batch


def test_fomaml_applies_the_query_gradient_at_the_adapted_weights(keyword_model, keyword_file):
    import torch.nn.functional as F

    from nlptransfer.meta.learner import seeded_dropout

    learner = load_learner(keyword_model, keyword_file)
    episode = EpisodeSampler(learner.pool.class_rows, 5, 3, 4, seed=0).episode(0)
    meta = learner.snapshot()
    # the expected meta-gradient, computed by hand: adapt, then the query loss's gradient there
    head = learner.adapt(episode, 3, 1e-2)
    learner.encoder.train()
    with seeded_dropout(learner.device, episode.seed + 1):
        loss = F.cross_entropy(learner.query_logits(episode, head), learner.labels(episode.query_labels))
    grads = torch.autograd.grad(loss, learner.params, allow_unused=True)
    learner.restore(meta)

    META_ALGORITHMS["fomaml"](learner, inner_steps=3, inner_lr=1e-2, outer_lr=0.0).step([episode])
    assert all(torch.equal(p, m) for p, m in zip(learner.snapshot(), meta))
    lr = 1e-3
    META_ALGORITHMS["fomaml"](learner, inner_steps=3, inner_lr=1e-2, outer_lr=lr).step([episode])
    moved = 0
    for p, m, g in zip(learner.snapshot(), meta, grads):
        if g is None:  # BERT's pooler: unused by mean pooling, so it must not move
            torch.testing.assert_close(p, m)
            continue
        # AdamW's first step (no decay): -lr * g / (|g| + eps), i.e. down the query gradient
        torch.testing.assert_close(p, m - lr * g / (g.abs() + 1e-8), atol=1e-6, rtol=1e-4)
        moved += int((p != m).any())
    assert moved > 10


@pytest.mark.parametrize("algorithm, outer_lr", [("reptile", 1.0), ("fomaml", 1e-3)])
def test_meta_training_improves_accuracy_on_held_out_classes(keyword_model, keyword_file, algorithm, outer_lr):
    learner = load_learner(keyword_model, keyword_file)
    train_classes, test_classes = split_classes(learner.pool.classes, 8, seed=0)
    train = EpisodeSampler(learner.pool.subset(train_classes).class_rows, 5, 1, 4, seed=0)
    test = EpisodeSampler(learner.pool.subset(test_classes).class_rows, 5, 1, 4, seed=1)

    def score() -> float:
        return mean_ci95([episode_accuracy(learner, test.episode(i), 2, 3e-3) for i in range(40)])[0]

    before = score()
    meta = META_ALGORITHMS[algorithm](learner, inner_steps=2, inner_lr=3e-3, outer_lr=outer_lr)
    for step in range(30):
        meta.step([train.episode(4 * step + i) for i in range(4)])
    after = score()
    assert after >= before + 0.2, (before, after)  # 0.43 -> 0.95 (reptile), 0.79 (fomaml) when written


def test_recipe_writes_an_encoder_folder_that_finetuning_starts_from(keyword_model, tiny_model, tmp_path):
    from transformers import AutoModel

    data = write_jsonl(tmp_path / "train.jsonl", keyword_rows(8, seed=1))
    out = tmp_path / "meta"
    run_script(
        str(REPO / "recipes" / "meta.py"),
        [
            *recipe_args(keyword_model, {"train": str(data)}, out),
            *("--label_column_name", "topic", "--meta_test_classes", "0.25", "--meta_val_classes", "3"),
            *("--n_way", "3", "--k_shot", "2"),
            *("--query", "2", "--meta_steps", "3", "--meta_batch_size", "2", "--inner_steps", "2"),
            *("--inner_lr", "1e-3", "--eval_episodes", "3", "--algorithm", "reptile", "--logging_steps", "2"),
        ],
    )
    meta = json.loads((out / META_FILE).read_text())
    assert len(meta["meta_test_classes"]) == 6 and len(meta["meta_val_classes"]) == 3
    assert len(meta["meta_train_classes"]) == 15  # 24 classes: the validation group is not meta-trained on
    groups = [set(meta[f"meta_{name}_classes"]) for name in ("train", "val", "test")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    results = json.loads((out / "all_results.json").read_text())
    assert [h["meta_step"] for h in results["history"]] == [2, 3]
    assert 0.0 <= results["meta_test"]["accuracy"] <= 1.0 and results["meta_test"]["episodes"] == 3
    trained, original = AutoModel.from_pretrained(out), AutoModel.from_pretrained(keyword_model)
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), original.parameters()))

    # the folder is a normal starting point: the fine-tuning recipe trains a classifier from it
    rows = [{"text": r["text"], "label": r["topic"][:3]} for r in keyword_rows(2, seed=2)]
    finetune_data = {"train": str(write_jsonl(tmp_path / "ft.jsonl", rows))}
    finetuned = tmp_path / "finetuned"
    run_script(
        str(REPO / "recipes" / "finetune.py"), recipe_args(str(out), finetune_data, finetuned, "--max_steps", "2")
    )
    assert json.loads((finetuned / "all_results.json").read_text())["train_steps"] == 2


def test_recipe_refuses_a_non_empty_output_dir(keyword_model, keyword_file, tmp_path):
    (tmp_path / "taken.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--output_dir"):
        run_script(
            str(REPO / "recipes" / "meta.py"),
            [*recipe_args(keyword_model, {"train": keyword_file}, tmp_path), "--label_column_name", "topic"],
        )


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "--train_file"),
        (["--algorithm", "maml"], "--algorithm"),
        (["--inner_optimizer", "lion"], "--inner_optimizer"),
        (["--head_init", "random"], "--head_init"),
        (["--n_way", "1"], "--n_way"),
        (["--k_shot", "0"], "--k_shot"),
        (["--query", "0"], "--query"),
        (["--meta_batch_size", "0"], "--meta_batch_size"),
        (["--inner_lr", "0"], "--inner_lr"),
        (["--outer_lr", "-1"], "--outer_lr"),
        (["--meta_test_classes", "1.5"], "--meta_test_classes"),
        (["--meta_test_classes", "0"], "--meta_test_classes"),
        (["--meta_val_classes", "-1"], "--meta_val_classes"),
        (["--meta_val_classes", "2.5"], "--meta_val_classes"),
    ],
)
def test_bad_flags_name_the_flag(flags, message):
    train = [] if message == "--train_file" else ["--train_file", "train.jsonl"]
    with pytest.raises(ConfigError, match=message):
        parse_args(ModelArguments, MetaArguments, RunArguments, args=[*train, *flags])


def test_trec_config_parses():
    config = ["--config", str(REPO / "recipes/configs/meta_trec.yaml"), "--k_shot", "1"]
    model_args, args, run_args = parse_args(ModelArguments, MetaArguments, RunArguments, args=config)
    assert run_args.output_dir == "runs/meta_trec"
    assert args.label_column_name == "fine_label" and args.k_shot == 1 and args.algorithm in META_ALGORITHMS
    assert args.eval_budget == (args.inner_steps, args.inner_lr)


def test_too_few_classes_for_an_episode_names_the_flags(keyword_model, tmp_path):
    rows = make_classification_rows(60, seed=0)  # 3 classes: one held out leaves 2 for meta-training
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ConfigError, match="--n_way 5"):
        run_script(str(REPO / "recipes" / "meta.py"), recipe_args(keyword_model, {"train": str(data)}, tmp_path / "o"))
