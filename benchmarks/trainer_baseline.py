"""Reference baseline: a plain `transformers.Trainer`, set up the way the official examples do it.

TREC follows `run_glue.py` (no validation set, keep the final model, pad to max_length by default);
CoNLL-2003 follows `run_ner.py` (first sub-word labelled, dynamic padding, best model on validation F1).
It imports nothing from `nlptransfer` except `resolve_model`, which maps the model id to a local folder.

    export HF_HUB_OFFLINE=1
    python benchmarks/trainer_baseline.py --task trec
    python benchmarks/trainer_baseline.py --task conll --group_by_length
    python benchmarks/trainer_baseline.py --task trec --max_train_samples 64 --max_eval_samples 64 --epochs 1  # smoke

Results go to benchmarks/results/trainer_<task>_<padding>.json unless --output_json says otherwise.
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
from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from nlptransfer.resolve import resolve_model

from _common import benchmark_parser, write_results

parser = benchmark_parser(__doc__, seed=42, output=None)  # it writes --output_json
parser.add_argument("--task", choices=["trec", "conll"], required=True)
parser.add_argument("--model_name_or_path", default="sentence-transformers/all-MiniLM-L6-v2")
parser.add_argument("--data_dir", default=os.environ.get("NLPTRANSFER_DATA", "../shared/data"))
parser.add_argument("--epochs", type=float, default=3)
parser.add_argument("--batch_size", type=int, default=32)
parser.add_argument("--learning_rate", type=float, default=5e-5)
parser.add_argument("--max_seq_length", type=int, default=128)
parser.add_argument(
    "--padding", choices=["max_length", "dynamic"], default=None, help="trec: max_length, conll: dynamic"
)
parser.add_argument("--group_by_length", action="store_true")
parser.add_argument("--max_train_samples", type=int, default=None)
parser.add_argument("--max_eval_samples", type=int, default=None)
parser.add_argument("--output_json", default=None)
parser.add_argument("--bf16", action="store_true")
parser.add_argument(
    "--warmup_ratio", type=float, default=0.0, help="linear warm-up over this fraction of the steps (examples: 0)"
)
parser.add_argument("--optim", default=None, help="TrainingArguments.optim (default: the Trainer's, fused AdamW)")
args = parser.parse_args()
args.padding = args.padding or ("max_length" if args.task == "trec" else "dynamic")
args.output_json = args.output_json or f"benchmarks/results/trainer_{args.task}_{args.padding}.json"
start = time.perf_counter()
set_seed(args.seed)

# ---- data -----------------------------------------------------------------------------------------
folder = Path(args.data_dir) / ("trec" if args.task == "trec" else "conll2003")
splits = ["train", "test"] if args.task == "trec" else ["train", "validation", "test"]
raw = load_dataset("json", data_files={s: str(folder / f"{s}.jsonl") for s in splits})
for split in splits:
    limit = args.max_train_samples if split == "train" else args.max_eval_samples
    if limit is not None:
        raw[split] = raw[split].select(range(min(limit, len(raw[split]))))

if args.task == "trec":
    label_list = sorted(set(raw["train"]["label"]))
else:
    label_list = sorted({tag for tags in raw["train"]["ner_tags"] for tag in tags})
label2id = {label: i for i, label in enumerate(label_list)}
id2label = dict(enumerate(label_list))

model_path = resolve_model(args.model_name_or_path)
tokenizer = AutoTokenizer.from_pretrained(model_path)
padding = "max_length" if args.padding == "max_length" else False


def preprocess_trec(batch):
    enc = tokenizer(batch["text"], padding=padding, max_length=args.max_seq_length, truncation=True)
    enc["label"] = [label2id[label] for label in batch["label"]]
    return enc


def preprocess_conll(batch):
    """run_ner's tokenize_and_align_labels with label_all_tokens=False."""
    enc = tokenizer(
        batch["tokens"], padding=padding, max_length=args.max_seq_length, truncation=True, is_split_into_words=True
    )
    enc["labels"] = []
    for i, tags in enumerate(batch["ner_tags"]):
        labels, previous = [], None
        for word_id in enc.word_ids(batch_index=i):
            labels.append(-100 if word_id is None or word_id == previous else label2id[tags[word_id]])
            previous = word_id
        enc["labels"].append(labels)
    return enc


preprocess = preprocess_trec if args.task == "trec" else preprocess_conll
data = raw.map(preprocess, batched=True, remove_columns=raw["train"].column_names)
real_train_tokens = int(sum(sum(mask) for mask in data["train"]["attention_mask"]))

# ---- model, collator, metrics ---------------------------------------------------------------------
auto_cls = AutoModelForSequenceClassification if args.task == "trec" else AutoModelForTokenClassification
model = auto_cls.from_pretrained(model_path, num_labels=len(label_list), id2label=id2label, label2id=label2id)

if args.task == "conll":
    collator = DataCollatorForTokenClassification(tokenizer)
elif args.padding == "max_length":
    collator = default_data_collator
else:
    collator = DataCollatorWithPadding(tokenizer)


def compute_metrics_trec(eval_pred):
    preds, labels = np.argmax(eval_pred.predictions, axis=-1), eval_pred.label_ids
    f1s = []
    for c in range(len(label_list)):
        tp = np.sum((preds == c) & (labels == c))
        fp, fn = np.sum((preds == c) & (labels != c)), np.sum((preds != c) & (labels == c))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": float(np.mean(preds == labels)), "macro_f1": float(np.mean(f1s))}


def compute_metrics_conll(eval_pred):
    preds, labels = np.argmax(eval_pred.predictions, axis=-1), eval_pred.label_ids
    keep = labels != -100  # first sub-word of each word; special tokens, other sub-words and padding are -100
    y_true = [[label_list[t] for t in ts[k]] for ts, k in zip(labels, keep, strict=True)]
    y_pred = [[label_list[p] for p in ps[k]] for ps, k in zip(preds, keep, strict=True)]
    return {
        "precision": precision_score(y_true, y_pred),
        "recall": recall_score(y_true, y_pred),
        "f1": f1_score(y_true, y_pred),
        "accuracy": accuracy_score(y_true, y_pred),
    }


# ---- train and evaluate ---------------------------------------------------------------------------
with tempfile.TemporaryDirectory(prefix="trainer_baseline_") as output_dir:
    if args.task == "conll":  # run_ner with a validation set: evaluate and checkpoint every epoch, keep the best
        per_task = dict(eval_strategy="epoch", save_strategy="epoch", save_total_limit=1)
        per_task.update(load_best_model_at_end=True, metric_for_best_model="f1")
    else:  # run_glue without a validation set: no evaluation during training, keep the final model
        per_task = dict(eval_strategy="no", save_strategy="no")
    training_args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=args.learning_rate,
        num_train_epochs=args.epochs,
        seed=args.seed,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        warmup_steps=args.warmup_ratio,  # transformers 5: a float below 1 is a fraction of the steps
        logging_steps=50,
        report_to="none",
        dataloader_num_workers=0,
        bf16=args.bf16,
        **({"optim": args.optim} if args.optim else {}),
        use_cpu=not torch.cuda.is_available(),
        # transformers 5 replaced `group_by_length=True` with this option (same LengthGroupedSampler).
        train_sampling_strategy="group_by_length" if args.group_by_length else "random",
        # Counts every token fed to the model, padding included, to compare with the real tokens.
        include_num_input_tokens_seen="all",
        **per_task,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"] if args.task == "conll" else None,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics_trec if args.task == "trec" else compute_metrics_conll,
    )
    train_metrics = trainer.train().metrics
    validation_history = [log for log in trainer.state.log_history if "eval_f1" in log]
    test_metrics = trainer.evaluate(data["test"], metric_key_prefix="test")

# ---- report ---------------------------------------------------------------------------------------
result = {
    "task": args.task,
    "test_metrics": {k.removeprefix("test_"): v for k, v in test_metrics.items()},
    "validation_history": validation_history,
    "train_runtime": train_metrics["train_runtime"],
    "train_samples_per_second": train_metrics["train_samples_per_second"],
    "wall_time_s": time.perf_counter() - start,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "real_train_tokens_per_epoch": real_train_tokens,
    "fed_train_tokens_per_epoch": trainer.state.num_input_tokens_seen / args.epochs,
    "train_examples": len(data["train"]),
    "device": "cuda" if torch.cuda.is_available() else "cpu",
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    "config": {**vars(args), "resolved_model": model_path, "num_labels": len(label_list)},
}
write_results(Path(args.output_json), result)
print(
    f"[{args.task}/{args.padding}{'/grouped' if args.group_by_length else ''}] test: "
    + ", ".join(f"{k}={v:.4f}" for k, v in result["test_metrics"].items() if k in ("accuracy", "macro_f1", "f1"))
    + f" | train {result['train_runtime']:.1f}s ({result['train_samples_per_second']:.1f} samples/s)"
    + f" | wall {result['wall_time_s']:.1f}s | peak RSS {result['peak_rss_mib']:.0f} MiB"
    + f" | tokens/epoch real {real_train_tokens} fed {result['fed_train_tokens_per_epoch']:.0f}"
    + f" -> {args.output_json}"
)
