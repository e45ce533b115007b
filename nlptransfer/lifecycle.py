"""One run lifecycle for every recipe: `fit()` trains and scores, `finish_run()` saves, reports and pushes.

    accelerator = start_run(args, "nlptransfer-finetune", configs)
    ... data, model, loaders ...
    fitted = fit(accelerator, model, train_loader, args, eval_sets)
    finish_run(accelerator, args, fitted, save=..., configs=configs)

Recipes differ in the model they build, the losses they add and what they save, not in how they step,
select, score, save their config, print, free memory or push, so a flag like `--push_to_hub` means
the same in every recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from nlptransfer.batching import eval_dataloader, has_length, with_task
from nlptransfer.config import RunArguments, TrainArguments, TransferArguments, save_config
from nlptransfer.errors import ConfigError
from nlptransfer.evaluation import evaluate, evaluate_tasks, prefixed
from nlptransfer.hub import push_run
from nlptransfer.runs import CONFIG_FILE, write_results
from nlptransfer.sharding import scheduler_steps_per_update
from nlptransfer.strategies import L2SP, gradual_unfreezing
from nlptransfer.tasks import TASK_KINDS, Encoded, TaskSpec
from nlptransfer.training import (
    LossTerm,
    Trainer,
    build_optimizer,
    build_scheduler,
    greater_is_better,
    total_steps,
)

Loaders = DataLoader | Mapping[str, DataLoader]
Scorer = Callable[[torch.nn.Module, Loaders], dict[str, float]]

SELECTION_SPLIT = "validation"
"""The one split a run selects on (best model, early stopping); test splits are only ever scored."""


def split_prefix(split: str) -> str:
    """The prefix of a split's scores in the results: `eval_` for validation, else the split's own name
    (`test_`, `source_test_`)."""
    return "eval" if split == SELECTION_SPLIT else split


@dataclass
class EvalSet:
    """A split to score: its loader (or one loader per task), the function that scores the model on it,
    and the metric that selects the best model when this split is the validation split."""

    loaders: Loaders
    score: Scorer
    main_metric: str


@dataclass
class Fitted:
    """A trained run: the prepared model (wrapped for DDP/DeepSpeed/FSDP), its results, and the pieces
    `finish_run` frees before the processes end."""

    model: torch.nn.Module | None
    results: dict
    trainer: Trainer | None
    pieces: list = field(default_factory=list)

    def release(self) -> None:
        """Drop every reference to the prepared objects (gloo can hang at exit while a DDP model lives)."""
        self.model, self.trainer, self.pieces = None, None, []


def task_eval_sets(
    accelerator: Accelerator,
    encoded: Mapping[str, Encoded],
    spec: TaskSpec,
    collator: Callable,
    batch_size: int,
    splits: Sequence[str] = ("validation", "test"),
    loader_options: Mapping[str, object] | None = None,
) -> dict[str, EvalSet]:
    """One task's splits to score (those of `splits` that it has), each by the task kind's metrics;
    `loader_options` (`TrainArguments.dataloader_options`) go to every loader."""

    def scorer(split: str) -> Scorer:  # validation also calibrates (a multi-label task's thresholds)
        calibrate = split == SELECTION_SPLIT
        return lambda model, loader: evaluate(accelerator, model, loader, encoded[split], spec, calibrate=calibrate)

    loader = partial(eval_dataloader, batch_size=batch_size, collator=collator, **(loader_options or {}))
    main_metric = TASK_KINDS[spec.kind].default_metric
    return {
        split: EvalSet(loader(encoded[split].features), scorer(split), main_metric)
        for split in splits
        if split in encoded
    }


def multitask_eval_sets(
    accelerator: Accelerator,
    encoded: Mapping[str, Mapping[str, Encoded]],
    specs: Mapping[str, TaskSpec],
    collator: Callable,
    batch_size: int,
    splits: Sequence[str] = ("validation", "test"),
    loader_options: Mapping[str, object] | None = None,
) -> dict[str, EvalSet]:
    """Per split, one loader per task that has it, scored as `<task>_<metric>` plus their `average`;
    `loader_options` as in `task_eval_sets`."""

    def scorer(split: str) -> Scorer:
        calibrate = split == SELECTION_SPLIT
        return lambda model, loaders: evaluate_tasks(
            accelerator, model, loaders, encoded, specs, split, calibrate=calibrate
        )

    eval_sets = {}
    for split in splits:
        loaders = {
            name: eval_dataloader(
                with_task(encoded[name][split].features, i), batch_size, collator, **(loader_options or {})
            )
            for i, name in enumerate(specs)
            if split in encoded[name]
        }
        if loaders:
            eval_sets[split] = EvalSet(loaders, scorer(split), "average")
    return eval_sets


def weighted_task_loss(spec: TaskSpec) -> Callable[[object, dict], torch.Tensor] | None:
    """A single-task model's loss with `spec.class_weights` (None without them: the model's own loss)."""
    if spec.class_weights is None:
        return None
    kind = TASK_KINDS[spec.kind]
    return lambda outputs, batch: kind.loss(outputs.logits, batch["labels"], spec.class_weights)


def enable_gradient_checkpointing(model: torch.nn.Module) -> bool:
    """Recompute activations in the backward pass instead of keeping them, in every transformers model inside
    `model` that trains and supports it: the model itself, or one in a PEFT wrapper, a `MultiTaskModel`, a
    distillation or domain-adversarial wrapper; layers copied out of such a model (a task's private top
    layers) too. False if there was nothing to checkpoint."""
    covered: set[int] = set()
    for module in model.modules():
        if id(module) in covered or not isinstance(module, PreTrainedModel) or not _trains(module):
            continue
        if not module.supports_gradient_checkpointing:
            continue
        if hasattr(module, "activation_checkpointing_enable"):  # its name since transformers 5; the old one warns
            module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        covered.update(id(inner) for inner in module.modules())
    for module in model.modules():
        if id(module) not in covered and isinstance(module, GradientCheckpointingLayer) and _trains(module):
            module.gradient_checkpointing, module._gradient_checkpointing_func = True, NON_REENTRANT_CHECKPOINT
            covered.add(id(module))
    return bool(covered)


# non-reentrant: correct when no input of a layer needs a gradient (frozen embeddings, adapters)
NON_REENTRANT_CHECKPOINT = partial(checkpoint, use_reentrant=False)


def _trains(module: torch.nn.Module) -> bool:
    """Whether any weight of `module` trains (a frozen teacher gains nothing from checkpointing)."""
    return any(parameter.requires_grad for parameter in module.parameters())


def _prepare_loaders(accelerator: Accelerator, eval_sets: Mapping[str, EvalSet]) -> dict[str, EvalSet]:
    """Every eval loader through `accelerator.prepare` (each example scored once across processes)."""
    prepared = {}
    for split, eval_set in eval_sets.items():
        if isinstance(eval_set.loaders, Mapping):
            loaders = {name: accelerator.prepare(loader) for name, loader in eval_set.loaders.items()}
        else:
            loaders = accelerator.prepare(eval_set.loaders)
        prepared[split] = EvalSet(loaders, eval_set.score, eval_set.main_metric)
    return prepared


def fit(
    accelerator: Accelerator,
    model: torch.nn.Module,
    train_loader: DataLoader,
    args: TrainArguments,
    eval_sets: Mapping[str, EvalSet],
    *,
    transfer: TransferArguments | None = None,
    loss_terms: Sequence[LossTerm] = (),
    callbacks: Sequence[Callable[[Trainer], None]] = (),
    own_lr: Sequence[tuple[Sequence[torch.nn.Parameter], float]] = (),
    task_loss: Callable[[object, dict], torch.Tensor] | None = None,
) -> Fitted:
    """Build the optimizer and schedule, prepare, train (selecting on the `validation` split when there is
    one, by --metric_for_best_model or the split's main metric), restore the best model and score every split.

    `transfer` adds layer-wise LR decay, gradual unfreezing and L2-SP; `own_lr` pairs (parameters, lr) get
    their own LR (learned loss weights, layer mixes, a domain classifier); `callbacks` run before every
    training batch with the trainer (its `state.step` and `max_steps` give the progress); `task_loss`
    (`weighted_task_loss`) replaces the model's own loss.

    The validation split is scored first: scoring it fits what the task kinds choose on validation (a
    multi-label task's thresholds), which the other splits are then scored with."""
    checkpointing = args.gradient_checkpointing and enable_gradient_checkpointing(model)
    optimizer = build_optimizer(model, args, transfer.layerwise_lr_decay if transfer else None, own_lr)
    if plugin := accelerator.state.deepspeed_plugin:  # our batch samplers leave DataLoader.batch_size unset
        batch_size = getattr(train_loader.batch_sampler, "batch_size", None) or args.per_device_train_batch_size
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size
        if plugin.deepspeed_config.get("gradient_clipping", "auto") == "auto":  # DeepSpeed clips, not accelerate
            plugin.deepspeed_config["gradient_clipping"] = args.max_grad_norm
    if not has_length(train_loader) and not args.max_steps:
        raise ConfigError("--streaming: a stream has no length, so no epoch count; set --max_steps")
    if not has_length(train_loader) and transfer and transfer.gradual_unfreezing == "epoch":
        raise ConfigError("--gradual_unfreezing epoch needs epochs; a stream has none: give a step count instead")
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    eval_sets = _prepare_loaders(accelerator, eval_sets)
    steps = args.max_steps or total_steps(len(train_loader), args)
    per_update = scheduler_steps_per_update(accelerator)  # DeepSpeed steps the schedule once, accelerate per process
    scheduler = build_scheduler(optimizer, steps, args, per_update)
    batches = len(train_loader) if has_length(train_loader) else 0
    if transfer and (every := transfer.unfreeze_every(batches, args.gradient_accumulation_steps)):
        gradual_unfreezing(scheduler, every * per_update)
    scheduler = accelerator.prepare(scheduler)
    loss_terms = list(loss_terms)
    if transfer and transfer.l2sp_beta:
        loss_terms.append(L2SP(accelerator.unwrap_model(model), transfer.l2sp_beta))

    def score(split: str) -> Callable[[], dict[str, float]]:
        return lambda: eval_sets[split].score(model, eval_sets[split].loaders)

    selecting = SELECTION_SPLIT in eval_sets
    metric = (args.metric_for_best_model or eval_sets[SELECTION_SPLIT].main_metric) if selecting else None
    trainer = Trainer(
        accelerator,
        model,
        optimizer,
        scheduler,
        train_loader,
        args,
        evaluate=score(SELECTION_SPLIT) if selecting else None,
        metric_for_best_model=metric,
        greater_is_better=greater_is_better(metric, args.greater_is_better) if metric else True,
        loss_terms=loss_terms,
        callbacks=callbacks,
        max_steps=steps,
        task_loss=task_loss,
    )
    results = trainer.train()
    results["train_gradient_checkpointing"] = checkpointing
    if trainer.load_best():  # what selection saw, to check the restored model against
        results.update(
            best_metric=trainer.state.best_metric, best_step=trainer.state.best_step, best_metric_name=metric
        )
    for split in sorted(eval_sets, key=lambda name: name != SELECTION_SPLIT):
        results.update(prefixed(score(split)(), split_prefix(split)))
    return Fitted(model, results, trainer, [optimizer, scheduler, train_loader, eval_sets])


HEADLINE_METRICS = ("accuracy", "f1", "pearson", "spearman", "mse", "average", "risk", "runtime")
"""The results a finished run prints: every split's main metrics and the training time."""


def headline(results: Mapping[str, object]) -> str:
    """One line per headline result, `key: value`, sorted by key: the same format in every recipe."""
    keys = sorted(
        key
        for key, value in results.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and key.rsplit("_", 1)[-1] in HEADLINE_METRICS
    )
    width = max((len(key) for key in keys), default=0)
    return "\n".join(f"{key:>{width}}: {results[key]:.4f}" for key in keys)


def save_fitted(
    accelerator: Accelerator, output_dir: Path, fitted: Fitted, save: Callable[[Path], dict | None]
) -> dict:
    """Save a trained run's model and results, then free it: `save(output_dir)` writes the model on every
    process (gathering sharded weights needs them all) and returns results to add."""
    results = fitted.results
    results.update(save(output_dir) or {})
    if accelerator.is_main_process:
        write_results(output_dir, results)
    accelerator.wait_for_everyone()
    fitted.release()
    accelerator.free_memory()  # gloo can hang at exit while prepared models live
    return results


def finish_run(
    accelerator: Accelerator,
    args: RunArguments,
    fitted: Fitted,
    *,
    save: Callable[[Path], dict | None],
    configs: Sequence[object],
    before_end: Callable[[], None] | None = None,
) -> dict:
    """Save the run and end it: the model and `all_results.json` (`save_fitted`), the resolved arguments
    (`run_config.yaml`, which `--config` reads back), one headline, then `before_end` (more runs that
    need the processes, e.g. comparisons), ended trackers, and the Hub push (after saving: a failed
    push loses nothing)."""
    output_dir = Path(args.output_dir)
    results = save_fitted(accelerator, output_dir, fitted, save)
    if accelerator.is_main_process:
        save_config(output_dir / CONFIG_FILE, *configs, args)
        print(headline(results))
        print(f"saved to {output_dir}")
    if before_end is not None:
        before_end()
    accelerator.end_training()
    if args.push_to_hub and accelerator.is_main_process:
        print(f"pushed to {push_run(output_dir, args.hub_model_id, private=args.hub_private)}")
    return results
