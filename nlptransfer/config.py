"""Dataclass arguments for every recipe, parsed by `HfArgumentParser`, with `--config file.yaml`.

Values in the YAML file come first and flags on the command line override them, so
`--config run.yaml --learning_rate 1e-4` does what it reads like. The same dataclasses are
saved beside the model (`run_config.yaml`) and can be passed back with `--config`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate.utils import DataLoaderConfiguration
from transformers import HfArgumentParser

from nlptransfer.allocator import ALLOCATORS
from nlptransfer.errors import ConfigError
from nlptransfer.losses import LOSS_WEIGHTINGS
from nlptransfer.sampling import build_task_sampler
from nlptransfer.tasks import TASK_KINDS, THRESHOLD_TUNING, TaskSpec, check_long_text

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "Local folder or Hub id of the pretrained encoder (offline aliases: see `nlptransfer models`)."
        },
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer folder or id, if not the model's."})
    revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit) of the model."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow code from the model repo to run. Off unless you trust the repo."}
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Attention kernel: sdpa, eager, ... (default: transformers' choice, sdpa). On a CPU, eager was "
            "4-9%% faster per bf16 step on short batches but slower end to end on CoNLL's long sentences."
        },
    )


@dataclass
class DataArguments:
    task_type: str = field(
        default="classification",
        metadata={
            "help": "Kind of task: classification (one text or a pair), pair_classification (needs "
            "--text_pair_column_name), multilabel (any number of classes per text: a list of names, or one "
            "string of names separated by commas), regression (a number per text or pair), or ner (word tags)."
        },
    )
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id, read with `datasets`."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    dataset_split: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset: which `datasets` split expression each split reads, e.g. "
            "`train=train[:90%%],validation=train[90%%:],test=test` (default: train, validation/dev/valid, test)."
        },
    )
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training data: .jsonl/.json/.csv/.tsv, CoNLL, .parquet, .arrow, or a `save_to_disk` folder "
            "(converted once to Arrow in the `datasets` cache, memory-mapped after)."
        },
    )
    validation_file: str | None = field(default=None, metadata={"help": "Validation data (model selection)."})
    test_file: str | None = field(default=None, metadata={"help": "Test data, only ever scored, never selected on."})
    text_column_name: str = field(default="text", metadata={"help": "Column holding the text (classification)."})
    text_pair_column_name: str | None = field(
        default=None, metadata={"help": "Second text column for sentence-pair tasks (e.g. text_b)."}
    )
    label_column_name: str = field(default="label", metadata={"help": "Column holding the class label."})
    tokens_column_name: str = field(default="tokens", metadata={"help": "Column holding the word list (ner)."})
    tags_column_name: str = field(default="ner_tags", metadata={"help": "Column holding the tag list (ner)."})
    conll_token_column: int = field(default=0, metadata={"help": "CoNLL files: column index of the word."})
    conll_tag_column: int = field(default=-1, metadata={"help": "CoNLL files: column index of the tag (-1: last)."})
    max_seq_length: int = field(
        default=128, metadata={"help": "Maximum tokens per input; longer NER sentences are split into windows."}
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "recipes/finetune.py: read --train_file row by row as training consumes it (files larger than "
            "memory or the disk cache; nothing is converted or cached). One checking pass first reports any bad row "
            "and counts the labels; then rows are tokenized as they are read, shuffled in a seeded buffer. Needs "
            "--max_steps (a stream has no length); validation only from a --validation_file (none is carved); no "
            "length grouping."
        },
    )
    preprocessing_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "Processes that check and tokenize the data (`Dataset.map(num_proc=...)`; default: one per core "
            "for a split of 100,000 rows or more, else 1); the result is cached in the `datasets` cache, so a second "
            "run with the same data, tokenizer and settings skips it."
        },
    )
    validation_split_percentage: int = field(
        default=0,
        metadata={
            "help": "Without a validation file: percent of train held out (seeded) for evaluation and "
            "best-model selection. 0 keeps the final model."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N validation examples."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Keep only the first N test examples."})
    class_weights: str | None = field(
        default=None,
        metadata={
            "help": "Weigh the loss per class: `balanced` (classification: n / (classes x count); multilabel: "
            "BCE pos_weight = negatives / positives per label), `none`, or a JSON file of {label: weight} (missing "
            "labels weigh 1) or a list in label order. Default: `balanced` for multilabel, none otherwise."
        },
    )
    long_text: str = field(
        default="truncate",
        metadata={
            "help": "(Pair) classification, multilabel, regression: texts longer than --max_seq_length are "
            "`truncate`d, or `chunk`ed into windows overlapping by --doc_stride tokens, each trained with the "
            "text's label; at evaluation and in predict/serve the windows' logits are pooled (--chunk_pooling) "
            "into the text's. NER always splits long sentences into windows."
        },
    )
    doc_stride: int = field(default=32, metadata={"help": "--long_text chunk: tokens two windows share."})
    chunk_pooling: str = field(
        default="mean", metadata={"help": "--long_text chunk: `mean` or `max` of the windows' logits."}
    )
    threshold_tuning: str = field(
        default="per_label",
        metadata={
            "help": "Multilabel: how validation chooses the probability at which a label is predicted: "
            "`per_label` (each label's best F1; labels absent from validation take the global one), `global` "
            "(one threshold, best macro F1), or `fixed` (0.5). Saved with the model; used by predict/serve."
        },
    )

    def __post_init__(self):
        if self.threshold_tuning not in THRESHOLD_TUNING:
            raise ConfigError(
                f"--threshold_tuning {self.threshold_tuning!r}: choose one of {', '.join(THRESHOLD_TUNING)}"
            )
        if self.task_type not in TASK_KINDS:
            raise ConfigError(f"--task_type {self.task_type!r} is not known; choose one of {sorted(TASK_KINDS)}")
        TASK_KINDS[self.task_type].check_spec(TaskSpec.from_data_args(self))
        if self.dataset_name is None and self.train_file is None:
            raise ConfigError("give --train_file (a local file) or --dataset_name (a Hub dataset id)")
        if not 0 <= self.validation_split_percentage < 100:
            raise ConfigError(
                f"--validation_split_percentage must be in [0, 100), got {self.validation_split_percentage}"
            )
        if self.max_seq_length < 8:
            raise ConfigError(f"--max_seq_length must be at least 8, got {self.max_seq_length}")
        check_long_text(TaskSpec.from_data_args(self))
        if self.long_text == "chunk" and TASK_KINDS[self.task_type].head == "token":
            raise ConfigError("--long_text chunk is for text classification; NER splits long sentences by itself")


@dataclass
class TaskArguments(DataArguments):
    """One task of a multi-task run: the data flags plus a name and a loss weight."""

    name: str | None = field(default=None, metadata={"help": "Task name (default: the train file's folder name)."})
    weight: float = field(default=1.0, metadata={"help": "Static loss weight of this task."})
    private_layers: int = field(
        default=0,
        metadata={
            "help": "Give this task its own copy of the encoder's top N layers (from the pretrained ones): the tasks "
            "share the layers below and only this task trains its copy. Costs N layers per forward of this task."
        },
    )
    layer_mix: bool = field(
        default=False,
        metadata={
            "help": "The head reads a learned softmax-weighted mix of all the encoder's layers (ELMo's scalar mix) "
            "instead of the last one, so this task can lean on layers the other tasks bend less."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.private_layers < 0:
            raise ConfigError(f"private_layers must be 0 or more, got {self.private_layers}")
        if not self.name:
            self.name = Path(self.train_file).parent.name if self.train_file else self.dataset_name.split("/")[-1]


@dataclass
class MultiTaskArguments:
    tasks: str | None = field(
        default=None,
        metadata={
            "help": "The tasks: a YAML/JSON file holding a list of task mappings, or that list as JSON; usually the "
            "`tasks:` list of the --config YAML. A task takes the data flags (task_type, train_file, "
            "text_column_name, ...) plus name and weight."
        },
    )
    task_sampling: str = field(
        default="temperature",
        metadata={"help": "Which task each batch comes from: proportional, temperature, uniform or round_robin."},
    )
    sampling_temperature: float = field(
        default=2.0, metadata={"help": "T of temperature sampling: P(task) ~ size^(1/T); 1 = proportional."}
    )
    mixed_task_batches: bool = field(
        default=False, metadata={"help": "Draw the task per example (batches mix tasks) instead of per batch."}
    )
    loss_weighting: str = field(default="static", metadata={"help": "static (task weights) or uncertainty (learned)."})
    loss_weighting_lr: float = field(
        default=1e-2,
        metadata={
            "help": "LR of learned loss weights (uncertainty): AdamW moves a parameter by about its LR per step, so at "
            "the model's 1e-4 the log-variances would barely leave 0 in a run and the weighting would stay static."
        },
    )
    layer_mix_lr: float = field(
        default=1e-2,
        metadata={
            "help": "LR of the layer-mix weights of tasks with `layer_mix: true` (a few numbers each): at the "
            "model's 1e-4 AdamW would leave them near the plain mean of the layers."
        },
    )
    adapter_per_task: bool = field(
        default=False, metadata={"help": "With --peft: one adapter per task on the shared encoder, not one shared."}
    )
    compare_single_task: bool = field(
        default=False,
        metadata={"help": "Also train each task alone (as many updates as it got here) and report per-task deltas."},
    )
    teachers: str | None = field(
        default=None,
        metadata={
            "help": "Teachers of some tasks, 'task=path,task=path': fine-tuned runs (single-task, LoRA, or a "
            "multi-task folder with a head of that name) whose soft targets the task's head also learns "
            "(Born-Again Multi-Task Networks, Clark et al. 2019). Their logits are cached under output_dir."
        },
    )
    teacher_annealing: bool = field(
        default=True,
        metadata={
            "help": "With --teachers: the soft-target weight falls from 1 to 0 over training (else --distill_alpha)."
        },
    )
    distill_alpha: float = field(
        default=0.5, metadata={"help": "With --teachers and no annealing: the soft-target weight (gold: 1 - alpha)."}
    )
    distill_temperature: float = field(default=1.0, metadata={"help": "With --teachers: softmax temperature T."})

    def __post_init__(self):
        build_task_sampler(self.task_sampling, self.sampling_temperature)  # names the bad value, lists the known
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ConfigError(f"--loss_weighting {self.loss_weighting!r} is not one of {sorted(LOSS_WEIGHTINGS)}")
        if self.loss_weighting_lr <= 0:
            raise ConfigError(f"--loss_weighting_lr must be positive, got {self.loss_weighting_lr}")
        if self.layer_mix_lr <= 0:
            raise ConfigError(f"--layer_mix_lr must be positive, got {self.layer_mix_lr}")
        if not self.tasks:
            raise ConfigError("give the tasks: a `tasks:` list in the --config YAML, or --tasks tasks.yaml")
        entries = self.tasks
        if isinstance(entries, str):
            text = Path(entries).read_text() if Path(entries).is_file() else entries
            try:
                entries = yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise ConfigError(f"--tasks: not a file and not a JSON/YAML list: {err}") from err
            entries = expand_variables(entries, "--tasks")
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise ConfigError(f"--tasks: expected a non-empty list of task mappings, got {entries!r}"[:300])
        known = {f.name for f in dataclasses.fields(TaskArguments)}
        self.task_args: list[TaskArguments] = []
        for i, entry in enumerate(entries):
            where = f"tasks[{i}]" + (f" ({entry['name']})" if entry.get("name") else "")
            unknown = sorted(set(entry) - known)
            if unknown:
                raise ConfigError(f"{where}: unknown field(s) {unknown}; a task takes {sorted(known)}")
            try:
                self.task_args.append(TaskArguments(**entry))
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from err
        names = [task.name for task in self.task_args]
        if len(set(names)) != len(names):
            raise ConfigError(f"tasks: names must be unique, got {names}; set `name:` per task")
        self.tasks = entries  # saved back as a YAML list by save_config
        self.teacher_paths: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in (self.teachers or "").split(","))):
            name, sep, path = (part.strip() for part in item.partition("="))
            if not sep or not name or not path:
                raise ConfigError(f"--teachers {self.teachers!r}: expected 'task=path' pairs, got {item!r}")
            if name not in names:
                raise ConfigError(f"--teachers: {name!r} is not a task of this run; the tasks are {names}")
            self.teacher_paths[name] = path
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ConfigError(f"--distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if self.distill_temperature <= 0:
            raise ConfigError(f"--distill_temperature must be > 0, got {self.distill_temperature}")


@dataclass
class TransferArguments:
    """Transfer strategies, options of the fine-tuning and multi-task recipes (`nlptransfer.strategies`)."""

    freeze: str = field(
        default="none",
        metadata={
            "help": "none; encoder: feature extraction, only the head(s) train; word_embeddings: the token "
            "embedding matrix stays as pretrained (on MiniLM half the weights; a faster step on CPU)."
        },
    )
    cache_features: bool = field(
        default=True, metadata={"help": "With --freeze encoder: encode each text once and reuse its features."}
    )
    freeze_layers: int = field(default=0, metadata={"help": "Freeze the embeddings and the bottom k encoder layers."})
    gradual_unfreezing: str | None = field(
        default=None,
        metadata={
            "help": "ULMFiT: start with the head, unfreeze one more layer group (top down) every N optimizer "
            "steps, or every 'epoch'."
        },
    )
    layerwise_lr_decay: float | None = field(
        default=None, metadata={"help": "Each layer's LR is the one above it times this (head: --learning_rate)."}
    )
    l2sp_beta: float = field(
        default=0.0, metadata={"help": "L2-SP: add beta * ||w - w_pretrained||^2 over the encoder weights."}
    )

    def __post_init__(self):
        if self.freeze not in ("none", "encoder", "word_embeddings"):
            raise ConfigError(f"--freeze must be none, encoder or word_embeddings, got {self.freeze!r}")
        if self.freeze_layers < 0:
            raise ConfigError(f"--freeze_layers must be >= 0, got {self.freeze_layers}")
        if self.freeze == "encoder" and (self.freeze_layers or self.gradual_unfreezing or self.l2sp_beta):
            raise ConfigError(
                "--freeze encoder trains only the head; it cannot be combined with --freeze_layers, "
                "--gradual_unfreezing or --l2sp_beta"
            )
        if self.gradual_unfreezing not in (None, "epoch") and not str(self.gradual_unfreezing).isdigit():
            raise ConfigError(
                f"--gradual_unfreezing must be a positive number of steps or 'epoch', got {self.gradual_unfreezing!r}"
            )
        if str(self.gradual_unfreezing) == "0":
            raise ConfigError("--gradual_unfreezing must be a positive number of steps or 'epoch', got 0")
        if self.layerwise_lr_decay is not None and not 0.0 < self.layerwise_lr_decay <= 1.0:
            raise ConfigError(f"--layerwise_lr_decay must be in (0, 1], got {self.layerwise_lr_decay}")
        if self.l2sp_beta < 0:
            raise ConfigError(f"--l2sp_beta must be >= 0, got {self.l2sp_beta}")

    def unfreeze_every(self, batches_per_epoch: int, gradient_accumulation_steps: int) -> int | None:
        """Optimizer steps between two unfreezings, or None when gradual unfreezing is off."""
        if self.gradual_unfreezing is None:
            return None
        if self.gradual_unfreezing == "epoch":
            return max(1, math.ceil(batches_per_epoch / gradient_accumulation_steps))
        return int(self.gradual_unfreezing)


@dataclass
class RunArguments:
    """What every run has, whatever it trains: where it goes, its seed, threads, trackers and Hub push."""

    output_dir: str = field(default="runs/latest", metadata={"help": "Where the model, results and checkpoints go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into a non-empty output_dir."})
    seed: int = field(default=42, metadata={"help": "Seed for initialisation, shuffling and dropout."})
    cpu_threads: int | None = field(
        default=None, metadata={"help": "Torch threads per process on CPU (default: the cores split over processes)."}
    )
    cpu_allocator: str = field(
        default="reuse",
        metadata={
            "help": "reuse: large buffers (up to 1 GiB) come from the C heap and are reused when freed, instead of "
            "being mapped afresh, page-faulting, at every step (Linux with glibc; elsewhere no change). system: "
            "the C library's defaults. The results are the same.",
        },
    )
    report_to: str = field(
        default="none", metadata={"help": "Trackers: none, all, or a comma list (tensorboard, wandb...)."}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bar."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the saved run and a model card to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo to push to, as namespace/name."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})

    def __post_init__(self):
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("--push_to_hub needs --hub_model_id namespace/name")
        if self.cpu_allocator not in ALLOCATORS:
            raise ConfigError(f"--cpu_allocator must be one of {sorted(ALLOCATORS)}, got {self.cpu_allocator!r}")

    @property
    def trackers(self) -> list[str] | str | None:
        if self.report_to in ("none", ""):
            return None
        return "all" if self.report_to == "all" else [t.strip() for t in self.report_to.split(",") if t.strip()]

    def may_reuse_output_dir(self) -> bool:
        """Whether a non-empty output_dir may be written into."""
        return self.overwrite_output_dir

    def accelerator_kwargs(self) -> dict:
        """What `start_run` passes to `Accelerator` for a run with these arguments."""
        return {"log_with": self.trackers, "project_dir": self.output_dir}


@dataclass
class TrainArguments(RunArguments):
    """The optimisation loop's settings (`fit`), on top of the run's."""

    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per device."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    # 1e-4 with 10% warm-up: chosen on a held-out 10% of TREC train (0.941 vs 0.921 for 5e-5), see README
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate of AdamW."})
    head_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the head (the weights outside the encoder's embeddings and layers: task "
            "heads); default --learning_rate. A new head starts from random weights and can take a larger one."
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (not on biases and LayerNorm)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 turns it off)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs to train (ignored if max_steps is set)."})
    max_steps: int | None = field(default=None, metadata={"help": "Total optimizer steps; overrides num_train_epochs."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of steps with linear warm-up."})
    lr_scheduler_type: str = field(
        default="linear", metadata={"help": "transformers scheduler name: linear, cosine, constant, ..."}
    )
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: epoch, steps or no."})
    eval_steps: int | None = field(
        default=None, metadata={"help": "Evaluate every N optimizer steps (eval_strategy=steps)."}
    )
    metric_for_best_model: str | None = field(
        default=None,
        metadata={
            "help": "Validation metric to select on (default by task: accuracy, f1 for ner, pearson for regression)."
        },
    )
    greater_is_better: bool | None = field(
        default=None,
        metadata={
            "help": "Whether a higher --metric_for_best_model is better. Needed only for a metric outside "
            "nlptransfer's own (accuracy, f1, precision, recall, pearson, spearman, average: higher; loss, mse: lower)."
        },
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after N evaluations without improvement (needs validation data)."}
    )
    checkpointing_steps: str | None = field(
        default=None, metadata={"help": "Save a resumable checkpoint every N steps, or 'epoch'."}
    )
    save_total_limit: int | None = field(default=None, metadata={"help": "Keep only the newest N checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "Checkpoint folder to resume from, or 'latest' for the newest in output_dir."}
    )
    group_by_length: bool = field(
        default=True,
        metadata={"help": "Batch examples of similar length together (less padding, ~1.8x faster on CoNLL)."},
    )
    mixed_precision: str | None = field(
        default="auto",
        metadata={
            "help": "no, fp16, bf16 or auto: what `accelerate launch`/its config says, else bf16 autocast where the "
            "hardware has fast bf16 (CPUs with AMX/AVX512-BF16, bf16 GPUs), else no. (null, as older run "
            "configs say, means auto.)"
        },
    )
    optim: str = field(
        default="adamw_torch_fused",
        metadata={"help": "adamw_torch_fused (one kernel for all weights) or adamw_torch (per-tensor foreach)."},
    )
    logging_steps: int = field(
        default=50, metadata={"help": "Log the mean training loss of the last N optimizer steps every N steps."}
    )
    dataloader_num_workers: int = field(
        default=0,
        metadata={
            "help": "Number of subprocesses to use for data loading (PyTorch only). 0 means that the data will be "
            "loaded in the main process."
        },
    )
    dataloader_pin_memory: bool = field(
        default=True,
        metadata={"help": "Whether or not to pin memory for DataLoader (CUDA only; batches then copy asynchronously)."},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "If True, use gradient checkpointing to save memory at the expense of slower backward pass."},
    )
    pad_to_multiple_of: str = field(
        default="auto",
        metadata={
            "help": "Pad each batch's width up to a multiple of N (tensor cores like multiples of 8); 0 or none: "
            "no extra padding; auto: 8 on CUDA, none on CPU."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        allowed = {"epoch", "steps", "no"}
        if self.eval_strategy not in allowed:
            raise ConfigError(f"--eval_strategy {self.eval_strategy!r} is not one of {sorted(allowed)}")
        if self.eval_strategy == "steps" and not self.eval_steps:
            raise ConfigError("--eval_strategy steps needs --eval_steps N")
        if self.checkpointing_steps not in (None, "epoch") and not str(self.checkpointing_steps).isdigit():
            raise ConfigError(
                f"--checkpointing_steps must be a positive integer or 'epoch', got {self.checkpointing_steps!r}"
            )
        if self.mixed_precision not in (None, "auto", "no", "fp16", "bf16"):
            raise ConfigError(f"--mixed_precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.optim not in ("adamw_torch_fused", "adamw_torch"):
            raise ConfigError(f"--optim must be adamw_torch_fused or adamw_torch, got {self.optim!r}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.dataloader_num_workers < 0:
            raise ConfigError(f"--dataloader_num_workers must be 0 or more, got {self.dataloader_num_workers}")
        self.pad_to_multiple_of = str(self.pad_to_multiple_of).lower()
        if self.pad_to_multiple_of not in ("auto", "none") and not self.pad_to_multiple_of.isdigit():
            raise ConfigError(
                f"--pad_to_multiple_of must be a whole number, auto or none, got {self.pad_to_multiple_of!r}"
            )

    def may_reuse_output_dir(self) -> bool:
        return self.overwrite_output_dir or bool(self.resume_from_checkpoint)  # resuming continues the run there

    def accelerator_kwargs(self) -> dict:
        return {
            **super().accelerator_kwargs(),
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "mixed_precision": self.mixed_precision,
            # pinned batches copy to the GPU while it computes; on a CPU there is no copy at all. A streamed training
            # set is read by every process, each keeping its share, not dispatched from the main one: dispatching
            # drops the loader's own generator, so each pass would draw from the global RNG that dropout uses and
            # a resumed run would not match an uninterrupted one
            "dataloader_config": DataLoaderConfiguration(
                non_blocking=self.dataloader_pin_memory, dispatch_batches=False
            ),
        }

    def pad_multiple(self, device: torch.device | str) -> int | None:
        """What --pad_to_multiple_of means on `device`: auto is 8 on CUDA (tensor cores), no padding elsewhere."""
        if self.pad_to_multiple_of == "auto":
            return 8 if torch.device(device).type == "cuda" else None
        if self.pad_to_multiple_of == "none":
            return None
        return int(self.pad_to_multiple_of) or None  # 0: off

    def dataloader_options(self, device: torch.device | str) -> dict:
        """What every DataLoader of a run on `device` is built with: worker processes, and pinned memory on CUDA."""
        pin_memory = self.dataloader_pin_memory and torch.device(device).type == "cuda"
        return {"num_workers": self.dataloader_num_workers, "pin_memory": pin_memory}


_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_variables(value: Any, where: str) -> Any:
    """`${NAME}` and `${NAME:-default}` in the strings of a config (nested lists and mappings too) replaced by
    the environment's value, e.g. `${NLPTRANSFER_DATA:-../shared/data}/trec/train.jsonl`."""
    if isinstance(value, dict):
        return {key: expand_variables(item, where) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_variables(item, where) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, default = match.groups()
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(f"{where}: ${{{name}}} is not set in the environment (or write ${{{name}:-default}})")
        return default

    return _VARIABLE.sub(substitute, value)


def config_file(path: str, option: str = "--config", kind: str = "") -> Path:
    """The file `path` names, or the shipped configuration of that name (`trec_sst2_conll`)."""
    from nlptransfer.recipes import shipped_configs

    if Path(path).is_file():
        return Path(path)
    shipped = shipped_configs(kind)
    if path.removesuffix(".yaml") in shipped:
        return shipped[path.removesuffix(".yaml")]
    raise ConfigError(f"{option} {path}: no such file, nor a shipped configuration ({', '.join(shipped)})")


def _yaml_to_argv(path: str) -> list[str]:
    """Turn a YAML mapping into flags, so argparse types and choices check the file's values too."""
    file = config_file(path)
    try:
        values = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML: {err}") from err
    values = expand_variables(values, f"--config {path}")
    if values is None:
        return []
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of flag names to values, got {type(values).__name__}")
    argv: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        flag = f"--{key}"
        if isinstance(value, list) and any(isinstance(item, dict) for item in value):
            argv += [flag, json.dumps(value)]  # e.g. the `tasks:` list of a multi-task run
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def parse_args(*dataclass_types: type, args: list[str] | None = None) -> tuple[Any, ...]:
    """Parse `--config file.yaml` plus command-line flags into instances of `dataclass_types`."""
    argv = list(sys.argv[1:] if args is None else args)
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise ConfigError("--config needs a YAML file path")
        argv = _yaml_to_argv(argv[at + 1]) + argv[:at] + argv[at + 2 :]
    parser = HfArgumentParser(dataclass_types)
    known = {option for action in parser._actions for option in action.option_strings}
    for token in argv:
        if token.startswith("--") and token.split("=")[0] not in known:
            raise ConfigError(f"unknown option {token.split('=')[0]!r}; run with --help for the list")
    return tuple(parser.parse_args_into_dataclasses(args=argv))


def save_config(path: str | Path, *configs: Any) -> None:
    """Write the resolved arguments as one flat YAML file that `--config` reads back."""
    merged: dict[str, Any] = {}
    for config in configs:
        merged.update(dataclasses.asdict(config))
    Path(path).write_text(yaml.safe_dump(merged, sort_keys=False))
