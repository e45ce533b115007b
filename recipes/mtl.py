"""Train one encoder for several tasks at once: shared encoder, one head per task (`MultiTaskModel`).

    accelerate launch recipes/mtl.py --config recipes/configs/trec_sst2_conll.yaml

    # two CPU processes (gloo); `--cpu --num_processes 2` would silently run one
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 recipes/mtl.py --config ...

The YAML lists the tasks (name, task_type, files or Hub dataset, columns, weight); every other flag
is the fine-tuning recipe's. `--compare_single_task` also trains each task alone for as many updates
as it got in the multi-task run and prints per-task deltas, flagging negative transfer.
`--teachers trec=runs/trec,conll2003=runs/conll` distils single-task teachers into the shared model
(Born-Again Multi-Task Networks: with teacher annealing, each such task's loss moves from the
teacher's soft targets to its labels over training); the single-task comparison runs stay plain.
"""

import dataclasses
import json
import math
import sys
from functools import partial
from pathlib import Path

from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from nlptransfer import (
    TASK_KINDS,
    ConfigError,
    LoraArgs,
    ModelArguments,
    MultiTaskArguments,
    MultiTaskCollator,
    MultiTaskModel,
    TaskSpec,
    TrainArguments,
    Trainer,
    TransferArguments,
    build_optimizer,
    build_scheduler,
    check_output_dir,
    count_parameters,
    encode_splits,
    eval_dataloader,
    evaluate,
    load_splits,
    load_tokenizer,
    parameters_in_sync,
    parse_args,
    save_config,
    start_run,
    total_steps,
    with_task,
)
from nlptransfer.adapters import encoder_adapter_config
from nlptransfer.distill import load_task_teacher
from nlptransfer.distill_model import MultiTaskDistillation
from nlptransfer.hub import push_run
from nlptransfer.sampling import MultiTaskBatchSampler, build_task_sampler
from nlptransfer.strategies import L2SP, apply_strategies, gradual_unfreezing
from nlptransfer.teacher_targets import cached_teacher_targets


def evaluate_tasks(accelerator, model, loaders, encoded, specs, split) -> dict[str, float]:
    """`<task>_<metric>` for every task with this split, plus `average` of each task's main metric."""
    metrics, main = {}, []
    for name, loader in loaders.items():
        scores = evaluate(accelerator, model, loader, encoded[name][split], specs[name], task=name)
        metrics.update({f"{name}_{key}": value for key, value in scores.items()})
        main.append(scores[TASK_KINDS[specs[name].kind].default_metric])
    if main:
        metrics["average"] = sum(main) / len(main)
        metrics["loss"] = sum(metrics[f"{name}_loss"] for name in loaders) / len(loaders)
    return metrics


def train(
    accelerator, tokenizer, model_args, task_args, mtl_args, args, lora_args, transfer_args, output_dir, teachers=None
) -> dict:
    args = dataclasses.replace(args, output_dir=str(output_dir))  # this run's checkpoints go there
    # data: every task read, validated and tokenized on its own; label sets from each train split, or
    # from the task's teacher, whose logits on the train rows are computed once and cached
    specs, encoded, train_features = {}, {}, {}
    with accelerator.main_process_first():
        for task in task_args:
            spec = TaskSpec.from_data_args(task, name=task.name)
            splits = load_splits(task, args.seed)
            teacher = load_task_teacher(teachers[task.name], task.name) if task.name in (teachers or {}) else None
            if teacher is not None:
                teacher.check_task(spec)  # the head takes the teacher's label names, in its order
            encoded[spec.name] = encode_splits(splits, spec, tokenizer, task.max_seq_length)
            specs[spec.name], train_features[spec.name] = spec, encoded[spec.name]["train"].features
            if teacher is not None:
                targets, status = cached_teacher_targets(
                    teacher,
                    splits["train"],
                    spec,
                    task.max_seq_length,
                    output_dir / "teacher_cache",
                    device=accelerator.device,
                    progress=not args.disable_tqdm and accelerator.is_local_main_process,
                )
                train_features[spec.name] = targets.attach(encoded[spec.name]["train"])
                accelerator.print(f"{spec.name}: teacher {teacher.path}, targets {status}")
                del teacher
    names = list(specs)
    for name in names:
        accelerator.print(f"{name}: {{{', '.join(f'{s}: {len(e.features)}' for s, e in encoded[name].items())}}}")

    # model: shared encoder, one head per task (+ one adapter shared by all tasks, or one per task)
    model = MultiTaskModel.from_encoder(
        model_args.model_name_or_path,
        list(specs.values()),
        revision=model_args.revision,
        trust_remote_code=model_args.trust_remote_code,
        loss_weighting=mtl_args.loss_weighting,
        task_weights={task.name: task.weight for task in task_args},
        layer_mix=[task.name for task in task_args if task.layer_mix],
        private_layers={task.name: task.private_layers for task in task_args},
    )
    if lora_args.enabled:
        model.add_adapter(encoder_adapter_config(lora_args, model.encoder), per_task=mtl_args.adapter_per_task)
    apply_strategies(model, transfer_args)  # --freeze / --freeze_layers, before the optimizer sees the weights
    trainable, total = count_parameters(model)
    accelerator.print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")

    # batches: the task of each batch (or example) drawn by the task sampler; one eval loader per task
    collator = MultiTaskCollator(tokenizer.pad_token_id, names)
    train_features = [f for i, name in enumerate(names) for f in with_task(train_features[name], i)]
    sampler = MultiTaskBatchSampler(
        [encoded[name]["train"].lengths() for name in names],
        args.per_device_train_batch_size,
        build_task_sampler(mtl_args.task_sampling, mtl_args.sampling_temperature),
        seed=args.seed,
        group_by_length=args.group_by_length,
        mixed=mtl_args.mixed_task_batches,
    )
    train_loader = DataLoader(train_features, batch_sampler=sampler, collate_fn=collator)
    eval_loaders = {
        (split, name): eval_dataloader(
            with_task(encoded[name][split].features, i), args.per_device_eval_batch_size, collator
        )
        for i, name in enumerate(names)
        for split in ("validation", "test")
        if split in encoded[name]
    }
    # learned loss weights and layer mixes (a few numbers each) train at their own LR
    weighting, mixes = list(model.loss_weighting.parameters()), list(model.layer_mix.parameters())
    if teachers:  # tasks with a teacher also learn its soft targets (teacher annealing: 1 -> 0 over training)
        model = MultiTaskDistillation(
            model, mtl_args.distill_alpha, mtl_args.distill_temperature, mtl_args.teacher_annealing
        )
    own_lr = [(weighting, mtl_args.loss_weighting_lr), (mixes, mtl_args.layer_mix_lr)]
    optimizer = build_optimizer(model, args, transfer_args.layerwise_lr_decay, own_lr)
    model, optimizer, train_loader, *prepared = accelerator.prepare(
        model, optimizer, train_loader, *eval_loaders.values()
    )
    eval_loaders = dict(zip(eval_loaders, prepared))
    steps = total_steps(len(train_loader), args)
    scheduler = build_scheduler(optimizer, steps, args, accelerator.num_processes)
    if every := transfer_args.unfreeze_every(len(train_loader), args.gradient_accumulation_steps):
        gradual_unfreezing(scheduler, every * accelerator.num_processes)
    scheduler = accelerator.prepare(scheduler)
    loss_terms = [L2SP(accelerator.unwrap_model(model), transfer_args.l2sp_beta)] if transfer_args.l2sp_beta else []
    callbacks = []
    if teachers:  # teacher annealing follows training progress
        callbacks.append(
            lambda trainer: accelerator.unwrap_model(trainer.model).set_progress(trainer.state.step / steps)
        )

    loaders = {
        split: {n: loader for (s, n), loader in eval_loaders.items() if s == split} for split in ("validation", "test")
    }
    evaluate_on = {
        split: partial(evaluate_tasks, accelerator, model, loaders[split], encoded, specs, split) for split in loaders
    }

    # train: select on the average validation score over tasks, never on test
    has_validation = bool(loaders["validation"])
    trainer = Trainer(
        accelerator,
        model,
        optimizer,
        scheduler,
        train_loader,
        args,
        evaluate=evaluate_on["validation"] if has_validation else None,
        metric_for_best_model=(args.metric_for_best_model or "average") if has_validation else None,
        loss_terms=loss_terms,
        callbacks=callbacks,
        max_steps=steps,
    )
    results = trainer.train()
    trainer.load_best()
    for split, prefix in (("validation", "eval"), ("test", "test")):
        scores = evaluate_on[split]()
        results.update({f"{prefix}_{key}": value for key, value in scores.items()})
    results.update(trainable_parameters=trainable, total_parameters=total, tasks=names, teachers=teachers or {})
    results["parameters_in_sync"] = parameters_in_sync(accelerator, model)  # DDP kept every rank identical
    batches = results["train_steps"] * args.gradient_accumulation_steps * accelerator.num_processes
    results["task_batches"] = dict(zip(names, sampler.task_counts(batches)))  # updates each task got

    # one artifact: encoder (or adapter), every head, label names, tokenizer, results
    state_dict = accelerator.get_state_dict(model)  # gathers sharded parameters; every rank calls it
    multitask = accelerator.unwrap_model(model)
    if isinstance(multitask, MultiTaskDistillation):  # the training wrapper: save the model inside
        multitask, state_dict = multitask.model, {k.removeprefix("model."): v for k, v in state_dict.items()}
    if accelerator.is_main_process:
        multitask.save_pretrained(output_dir, state_dict=state_dict)
        (Path(output_dir) / "all_results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    accelerator.wait_for_everyone()
    del model, multitask, optimizer, trainer, train_loader, eval_loaders, loaders, evaluate_on, scheduler
    accelerator.free_memory()
    return results


def main(argv=None):
    model_args, mtl_args, args, lora_args, transfer_args = parse_args(
        ModelArguments, MultiTaskArguments, TrainArguments, LoraArgs, TransferArguments, args=argv
    )
    if mtl_args.adapter_per_task and not lora_args.enabled:
        raise ConfigError("--adapter_per_task needs an adapter: add --peft lora (or --peft_config_file)")
    check_output_dir(args.output_dir, args)
    accelerator = start_run(args)
    if args.trackers:
        accelerator.init_trackers("nlptransfer-mtl", config={"tasks": ",".join(t.name for t in mtl_args.task_args)})
    tokenizer = load_tokenizer(model_args)
    output_dir = Path(args.output_dir)

    results = train(
        accelerator,
        tokenizer,
        model_args,
        mtl_args.task_args,
        mtl_args,
        args,
        lora_args,
        transfer_args,
        output_dir,
        mtl_args.teacher_paths,
    )
    if accelerator.is_main_process:
        save_config(output_dir / "run_config.yaml", model_args, mtl_args, args, lora_args, transfer_args)
        print(
            "\n".join(
                f"{k:>40}: {v:.4f}"
                for k, v in sorted(results.items())
                if k.startswith(("test_", "eval_average"))
                and k.rsplit("_", 1)[-1] in ("accuracy", "f1", "pearson", "average")
            )
        )
        print(f"saved to {output_dir}")

    if mtl_args.compare_single_task:  # each task alone, as many updates as it got in the multi-task run
        single = {}
        for task in mtl_args.task_args:
            set_seed(args.seed)
            per_process = args.gradient_accumulation_steps * accelerator.num_processes
            updates = math.ceil(results["task_batches"][task.name] / per_process)
            single[task.name] = train(
                accelerator,
                tokenizer,
                model_args,
                # alone, the whole encoder is the task's and a loss weight only rescales its loss
                [dataclasses.replace(task, private_layers=0, weight=1.0)],
                mtl_args,
                dataclasses.replace(args, max_steps=updates),
                lora_args,
                transfer_args,
                output_dir / "single_task" / task.name,
            )
        if accelerator.is_main_process:
            table = negative_transfer_report(results, single, {t.name: t for t in mtl_args.task_args})
            (output_dir / "single_task_comparison.json").write_text(json.dumps(table, indent=2))
            print(markdown(table))

    accelerator.end_training()
    if args.push_to_hub and accelerator.is_main_process:  # after saving: a failed push loses nothing
        print(f"pushed to {push_run(output_dir, args.hub_model_id, private=args.hub_private)}")
    return results


def negative_transfer_report(multi: dict, single: dict[str, dict], tasks) -> list[dict]:
    """Per task: the main test metric (validation if no test) multi-task vs alone; a drop is negative transfer."""
    rows = []
    for name, alone in single.items():
        metric = TASK_KINDS[tasks[name].task_type].default_metric
        prefix = "test" if f"test_{name}_{metric}" in multi else "eval"
        key = f"{prefix}_{name}_{metric}"
        delta = multi[key] - alone[key]
        rows.append(
            {
                "task": name,
                "split": prefix,
                "metric": metric,
                "multi_task": multi[key],
                "single_task": alone[key],
                "delta": delta,
                "negative_transfer": delta < 0,
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| task | split | metric | multi-task | single-task | delta |", "|---|---|---|---|---|---|"]
    for r in rows:
        flag = " **negative transfer**" if r["negative_transfer"] else ""
        lines.append(
            f"| {r['task']} | {r['split']} | {r['metric']} | {r['multi_task']:.4f} | {r['single_task']:.4f} | {100 * r['delta']:+.2f}{flag} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
