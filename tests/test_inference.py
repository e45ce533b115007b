"""`nlptransfer.inference`: one Predictor answers for every run kind, as the run's own model does."""

import pytest

from nlptransfer.inference import load_predictor

from conftest import make_classification_rows, make_ner_rows


def test_single_task_predictor_matches_the_pipeline(trained_runs):
    from transformers import pipeline

    texts = [row["text"] for row in make_classification_rows(12, seed=11)]
    predictor = load_predictor(trained_runs["classification"])
    assert predictor.task_names == ["classification"]
    reference = pipeline("text-classification", model=str(trained_runs["classification"]), device="cpu")(texts)
    ours = predictor.predict(texts)
    assert [p["classification"]["label"] for p in ours] == [r["label"] for r in reference]
    assert [p["classification"]["score"] for p in ours] == pytest.approx([r["score"] for r in reference], abs=1e-5)
    scores = predictor.label_scores(texts[:2])
    assert scores[0][0]["label"] == ours[0]["classification"]["label"] and len(scores[0]) == 3


def test_ner_and_lora_predictors_find_what_the_runs_learned(trained_runs):
    rows = make_ner_rows(8, seed=12)
    texts = [" ".join(row["tokens"]) for row in rows]
    ner = load_predictor(trained_runs["ner"]).predict(texts)
    found = sum(bool(p["ner"]) for p in ner)
    assert found >= 6, ner  # most toy sentences name a person
    lora = load_predictor(trained_runs["lora"])
    rows = make_classification_rows(24, seed=13)
    right = sum(
        p["classification"]["label"] == row["label"] for p, row in zip(lora.predict([r["text"] for r in rows]), rows)
    )
    assert right >= 18  # chance is 8


def test_multitask_predictor_equals_the_models_own_predict(trained_runs):
    from nlptransfer import MultiTaskModel

    texts = [row["text"] for row in make_classification_rows(6, seed=14)]
    predictor = load_predictor(trained_runs["multitask"])
    assert predictor.task_names == ["topic", "people"]
    expected = MultiTaskModel.from_pretrained(trained_runs["multitask"]).predict(texts)
    ours = predictor.predict(texts)
    assert [p["topic"]["label"] for p in ours] == [e["topic"]["label"] for e in expected]
    assert [p["topic"]["score"] for p in ours] == pytest.approx([e["topic"]["score"] for e in expected], abs=1e-5)
    spans = [[(x["entity"], x["start"], x["end"]) for x in p["people"]] for p in ours]
    assert spans == [[(x["entity"], x["start"], x["end"]) for x in e["people"]] for e in expected]
    with pytest.raises(KeyError, match="unknown task"):
        predictor.predict(texts, tasks=["nope"])
