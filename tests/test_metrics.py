import pytest

from nlptransfer.metrics import classification_metrics, ner_metrics


def test_classification_metrics_by_hand():
    # class 0: tp=2 fp=1 fn=0 -> p=2/3 r=1 f1=0.8 ; class 1: tp=1 fp=0 fn=1 -> p=1 r=0.5 f1=2/3
    # class 2 never occurs nor is predicted: left out of the macro average
    scores = classification_metrics([0, 0, 1, 1], [0, 0, 1, 0], num_labels=3)
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["precision"] == pytest.approx((2 / 3 + 1) / 2)
    assert scores["recall"] == pytest.approx(0.75)
    assert scores["f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_ner_default_vs_strict_by_hand():
    y_true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    # sentence 1: PER right, LOC predicted as I-LOC (conlleval accepts it, strict IOB2 does not)
    # sentence 2: ORG missed
    y_pred = [["B-PER", "I-PER", "O", "I-LOC"], ["O", "O"]]
    scores = ner_metrics(y_true, y_pred)
    assert scores["precision"] == pytest.approx(1.0)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(0.8)
    assert scores["strict_precision"] == pytest.approx(1.0)
    assert scores["strict_recall"] == pytest.approx(1 / 3)
    assert scores["strict_f1"] == pytest.approx(0.5)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["LOC_f1"] == pytest.approx(1.0) and scores["strict_LOC_f1"] == pytest.approx(0.0)
    assert scores["ORG_recall"] == 0.0 and scores["ORG_number"] == 1
    assert scores["PER_number"] == 1
