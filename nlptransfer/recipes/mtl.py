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
from functools import partial
from pathlib import Path

from accelerate.utils import set_seed
from torch.utils.data import ConcatDataset, DataLoader

from nlptransfer.adapters import AdapterArguments, encoder_adapter_config
from nlptransfer.batching import MultiTaskCollator, with_task
from nlptransfer.config import ModelArguments, MultiTaskArguments, TrainArguments, TransferArguments, parse_args
from nlptransfer.data import encode_splits, load_splits
from nlptransfer.distill import MultiTaskDistillation, cached_teacher_targets, load_task_teacher
from nlptransfer.errors import ConfigError, run_main
from nlptransfer.evaluation import negative_transfer_markdown, negative_transfer_report
from nlptransfer.lifecycle import finish_run, fit, multitask_eval_sets, save_fitted
from nlptransfer.modeling import count_parameters, load_tokenizer
from nlptransfer.multitask import MultiTaskModel
from nlptransfer.runs import save_model
from nlptransfer.sampling import MultiTaskBatchSampler, build_task_sampler
from nlptransfer.sharding import parameters_in_sync, zero_stage
from nlptransfer.strategies import apply_strategies
from nlptransfer.tasks import TaskSpec
from nlptransfer.training import start_run


def train(accelerator, tokenizer, model_args, task_args, mtl_args, args, adapter_args, transfer_args, teachers):
    """One multi-task run into `args.output_dir`; returns the fitted run and the task sampler."""
    # data: every task read, validated and tokenized on its own; label sets from each train split, or from
    # the task's teacher, whose logits on the train rows are computed once and cached
    specs, encoded, train_features = {}, {}, {}
    with accelerator.main_process_first():
        for task in task_args:
            spec = TaskSpec.from_data_args(task, name=task.name)
            splits = load_splits(task, args.seed)
            teacher = load_task_teacher(teachers[task.name], task.name) if task.name in teachers else None
            if teacher is not None:
                teacher.check_task(spec)  # the head takes the teacher's label names, in its order
            encoded[spec.name] = encode_splits(
                splits, spec, tokenizer, task.max_seq_length, task.class_weights, task.preprocessing_num_workers
            )
            specs[spec.name], train_features[spec.name] = spec, encoded[spec.name]["train"].features
            if teacher is not None:
                targets, status = cached_teacher_targets(
                    teacher,
                    splits["train"],
                    spec,
                    task.max_seq_length,
                    Path(args.output_dir) / "teacher_cache",
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
    if adapter_args.enabled:
        model.add_adapter(encoder_adapter_config(adapter_args, model.encoder), per_task=mtl_args.adapter_per_task)
    apply_strategies(model, transfer_args)  # --freeze / --freeze_layers, before the optimizer sees the weights
    trainable, total = count_parameters(model)
    accelerator.print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")

    # batches: the task of each batch (or example) drawn by the task sampler; one eval loader per task
    collator = MultiTaskCollator(tokenizer.pad_token_id, names, args.pad_multiple(accelerator.device))
    loading = args.dataloader_options(accelerator.device)
    sampler = MultiTaskBatchSampler(
        [encoded[name]["train"].lengths() for name in names],
        args.per_device_train_batch_size,
        build_task_sampler(mtl_args.task_sampling, mtl_args.sampling_temperature),
        seed=args.seed,
        group_by_length=args.group_by_length,
        mixed=mtl_args.mixed_task_batches,
        processes=accelerator.num_processes
        if zero_stage(accelerator) is not None
        else 1,  # DeepSpeed: one task per step
    )
    features = ConcatDataset([with_task(train_features[name], i) for i, name in enumerate(names)])
    # workers not kept between epochs: without its own generator, each pass draws from the global RNG
    train_loader = DataLoader(features, batch_sampler=sampler, collate_fn=collator, **loading)
    eval_sets = multitask_eval_sets(
        accelerator, encoded, specs, collator, args.per_device_eval_batch_size, loader_options=loading
    )
    # learned loss weights and layer mixes (a few numbers each) train at their own LR
    own_lr = [(list(model.loss_weighting.parameters()), mtl_args.loss_weighting_lr)]
    own_lr.append((list(model.layer_mix.parameters()), mtl_args.layer_mix_lr))
    callbacks = []
    if teachers:  # tasks with a teacher also learn its soft targets (teacher annealing: 1 -> 0 over training)
        model = MultiTaskDistillation(
            model, mtl_args.distill_alpha, mtl_args.distill_temperature, mtl_args.teacher_annealing
        )
        callbacks.append(lambda trainer: trainer.unwrapped.set_progress(trainer.state.step / trainer.max_steps))

    # train: select on the average validation score over tasks, never on test
    fitted = fit(
        accelerator, model, train_loader, args, eval_sets, transfer=transfer_args, callbacks=callbacks, own_lr=own_lr
    )
    results = fitted.results
    results.update(trainable_parameters=trainable, total_parameters=total, tasks=names, teachers=teachers)
    results["parameters_in_sync"] = parameters_in_sync(accelerator, fitted.model)  # DDP kept every rank identical
    batches = results["train_steps"] * args.gradient_accumulation_steps * accelerator.num_processes
    results["task_batches"] = dict(zip(names, sampler.task_counts(batches)))  # updates each task got
    return fitted


def main(argv=None):
    model_args, mtl_args, args, adapter_args, transfer_args = parse_args(
        ModelArguments, MultiTaskArguments, TrainArguments, AdapterArguments, TransferArguments, args=argv
    )
    if mtl_args.adapter_per_task and not adapter_args.enabled:
        raise ConfigError("--adapter_per_task needs an adapter: add --peft lora (or --peft_config_file)")
    configs = [model_args, mtl_args, adapter_args, transfer_args]
    accelerator = start_run(args, "nlptransfer-mtl", configs)
    if mtl_args.adapter_per_task and zero_stage(accelerator) == 3:  # see tests/test_sharded_recipes.py
        raise ConfigError("--adapter_per_task is not supported under ZeRO-3 yet (it trains worse than under ZeRO-2)")
    tokenizer = load_tokenizer(model_args)
    output_dir = Path(args.output_dir)
    common = (accelerator, tokenizer, model_args)
    fitted = train(*common, mtl_args.task_args, mtl_args, args, adapter_args, transfer_args, mtl_args.teacher_paths)

    def compare_single_task():  # each task alone, as many updates as it got in the multi-task run
        single = {}
        for task in mtl_args.task_args:
            set_seed(args.seed)
            updates = math.ceil(
                fitted.results["task_batches"][task.name]
                / (args.gradient_accumulation_steps * accelerator.num_processes)
            )
            alone_args = dataclasses.replace(
                args, max_steps=updates, output_dir=str(output_dir / "single_task" / task.name)
            )
            # alone, the whole encoder is the task's and a loss weight only rescales its loss
            alone = train(
                *common, [dataclasses.replace(task, private_layers=0, weight=1.0)], mtl_args, alone_args,
                adapter_args, transfer_args, {},
            )  # fmt: skip
            save = partial(save_model, accelerator, model=alone.model)
            single[task.name] = save_fitted(accelerator, Path(alone_args.output_dir), alone, save)
        if accelerator.is_main_process:
            rows = negative_transfer_report(fitted.results, single, {t.name: t.task_type for t in mtl_args.task_args})
            (output_dir / "single_task_comparison.json").write_text(json.dumps(rows, indent=2))
            print(negative_transfer_markdown(rows))

    # one artifact: encoder (or adapter), every head, label names, tokenizer, results
    return finish_run(
        accelerator,
        args,
        fitted,
        save=lambda out: save_model(accelerator, out, fitted.model),
        configs=configs,
        before_end=compare_single_task if mtl_args.compare_single_task else None,
    )


if __name__ == "__main__":
    run_main(main)
