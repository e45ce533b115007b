"""Reference baseline for multi-label classification: a plain `transformers.Trainer` on GoEmotions.

Set up as a user would: `problem_type="multi_label_classification"` (BCE over the labels), dynamic padding,
the best epoch by validation macro F1, then the decision threshold(s) chosen on validation and applied to
test. It uses nlptransfer only for `resolve_model` (the local copy of the model) and for the threshold search
and metrics (`tune_thresholds`, `multilabel_metrics`), so both sides choose and score thresholds the same way.

    export HF_HUB_OFFLINE=1
    python benchmarks/trainer_multilabel.py --learning_rate 5e-5 --epochs 3         # the first setup users try
    python benchmarks/trainer_multilabel.py --learning_rate 1e-4 --epochs 5 --bf16  # nlptransfer's budget

Prints one line, and writes the results to --output_json when given.
"""

import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from datasets import load_dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from nlptransfer.metrics import multilabel_metrics
from nlptransfer.resolve import resolve_model
from nlptransfer.tasks import tune_thresholds

from _common import benchmark_parser, write_results

parser = benchmark_parser(__doc__, seed=42, output=None)  # it writes --output_json
parser.add_argument("--model_name_or_path", default="sentence-transformers/all-MiniLM-L6-v2")
parser.add_argument("--data_dir", default=os.environ.get("NLPTRANSFER_DATA", "../shared/data"))
parser.add_argument("--epochs", type=float, default=5)
parser.add_argument("--batch_size", type=int, default=32)
parser.add_argument("--learning_rate", type=float, default=5e-5)
parser.add_argument("--warmup_steps_ratio", type=float, default=0.0, help="warm-up steps as a fraction of all")
parser.add_argument("--max_seq_length", type=int, default=128)
parser.add_argument("--threshold_tuning", choices=["per_label", "global", "fixed"], default="per_label")
parser.add_argument("--bf16", action="store_true")
parser.add_argument("--max_train_samples", type=int, default=None)
parser.add_argument("--output_json", default=None, help="write the results here (bench_multilabel.py reads them)")
args = parser.parse_args()
start = time.perf_counter()
set_seed(args.seed)

# ---- data: labels as lists of names, multi-hot float vectors for BCE -------------------------------
folder = Path(args.data_dir) / "goemotions"
raw = load_dataset("json", data_files={s: str(folder / f"{s}.jsonl") for s in ("train", "validation", "test")})
if args.max_train_samples:
    raw["train"] = raw["train"].select(range(args.max_train_samples))
label_list = sorted({label for labels in raw["train"]["labels"] for label in labels})
label2id = {label: i for i, label in enumerate(label_list)}
model_path = resolve_model(args.model_name_or_path)
tokenizer = AutoTokenizer.from_pretrained(model_path)


def preprocess(batch):
    enc = tokenizer(batch["text"], max_length=args.max_seq_length, truncation=True)
    hot = np.zeros((len(batch["labels"]), len(label_list)), dtype=np.float32)
    for row, labels in enumerate(batch["labels"]):
        hot[row, [label2id[label] for label in labels]] = 1.0
    enc["labels"] = hot.tolist()
    return enc


data = raw.map(preprocess, batched=True, remove_columns=raw["train"].column_names)
model = AutoModelForSequenceClassification.from_pretrained(
    model_path,
    num_labels=len(label_list),
    id2label=dict(enumerate(label_list)),
    label2id=label2id,
    problem_type="multi_label_classification",
)


def probabilities(predictions) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(predictions, dtype=np.float64)))


def compute_metrics(eval_pred):
    """Validation macro F1 at the thresholds tuned on it (as nlptransfer selects its best epoch)."""
    y_true, probs = eval_pred.label_ids.astype(bool), probabilities(eval_pred.predictions)
    thresholds = np.full(len(label_list), 0.5)
    if args.threshold_tuning != "fixed":
        thresholds = tune_thresholds(y_true, probs, per_label=args.threshold_tuning == "per_label")
    return {"f1": multilabel_metrics(y_true, probs >= thresholds, label_list)["f1"]}


with tempfile.TemporaryDirectory(prefix="trainer_multilabel_") as output_dir:
    steps = int(np.ceil(len(data["train"]) / args.batch_size) * args.epochs)
    training_args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=args.learning_rate,
        num_train_epochs=args.epochs,
        warmup_steps=int(args.warmup_steps_ratio * steps),
        seed=args.seed,
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="f1",
        logging_steps=100,
        report_to="none",
        bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length",
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
    )
    train_metrics = trainer.train().metrics
    validation_history = [log for log in trainer.state.log_history if "eval_f1" in log]
    validation = trainer.predict(data["validation"])
    test = trainer.predict(data["test"])

# thresholds from validation only, then test scored once with them
y_val, p_val = validation.label_ids.astype(bool), probabilities(validation.predictions)
thresholds = np.full(len(label_list), 0.5)
if args.threshold_tuning != "fixed":
    thresholds = tune_thresholds(y_val, p_val, per_label=args.threshold_tuning == "per_label")
y_test, p_test = test.label_ids.astype(int), probabilities(test.predictions)
test_metrics = multilabel_metrics(y_test, (p_test >= thresholds).astype(int), label_list)
at_half = multilabel_metrics(y_test, (p_test >= 0.5).astype(int), label_list)
result = {
    "system": "transformers Trainer",
    "test_metrics": test_metrics,
    "test_f1_at_0.5": at_half["f1"],
    "thresholds": thresholds.tolist(),
    "validation_history": validation_history,
    "train_runtime": train_metrics["train_runtime"],
    "wall_time_s": time.perf_counter() - start,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "parameters": sum(p.numel() for p in model.parameters()),
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    "config": {**vars(args), "resolved_model": model_path, "num_labels": len(label_list)},
}
if args.output_json:
    write_results(Path(args.output_json), result)
print(
    f"[goemotions trainer lr={args.learning_rate} epochs={args.epochs}{' bf16' if args.bf16 else ''}] "
    f"test macro F1 {test_metrics['f1']:.4f} (at 0.5: {at_half['f1']:.4f}), micro F1 {test_metrics['micro_f1']:.4f}"
    f" | train {result['train_runtime']:.0f}s | peak RSS {result['peak_rss_mib']:.0f} MiB"
)
