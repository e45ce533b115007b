"""Distil a fine-tuned teacher into a smaller, faster student (classification, pairs, regression or NER).

    # 3 of the teacher's 6 layers (0, 2, 4) as the student, soft targets at T=2 mixed half and half with the labels
    accelerate launch recipes/distill.py --teacher_name_or_path runs/trec --student_layers 0,2,4 \
        --train_file ../shared/data/trec/train.jsonl --test_file ../shared/data/trec/test.jsonl \
        --output_dir runs/trec-3l

    # another pretrained encoder as the student; the tokenizers may differ (NER aligns on words)
    accelerate launch recipes/distill.py --teacher_name_or_path runs/conll-mpnet --task_type ner \
        --model_name_or_path sentence-transformers/all-MiniLM-L6-v2 \
        --train_file ../shared/data/conll2003/eng.train --validation_file ../shared/data/conll2003/eng.testa \
        --test_file ../shared/data/conll2003/eng.testb --output_dir runs/conll-mpnet2minilm

The teacher (a fine-tuning, LoRA or multi-task run folder) reads the training rows once with its own
tokenizer; its logits are cached under --teacher_cache_dir and reused by later runs. --hidden_loss and
--attention_weight match states with a live teacher (same tokenizer only). --alpha 0 trains the same
student on the labels alone. --transfer_file adds unlabelled text that the teacher labels: those rows
teach the student through the soft targets alone. The student is saved as a plain model folder that loads in a `pipeline`.
"""

import sys
import time
from functools import partial

from nlptransfer import (
    ConfigError,
    DataArguments,
    ModelArguments,
    TaskSpec,
    TrainArguments,
    Trainer,
    build_optimizer,
    build_scheduler,
    check_output_dir,
    count_parameters,
    encode_splits,
    eval_dataloader,
    evaluate,
    load_splits,
    parameters_in_sync,
    parse_args,
    prefixed,
    save_config,
    save_run,
    start_run,
    total_steps,
    train_dataloader,
)
from nlptransfer.batching import without_labels
from nlptransfer.distill import DistillArguments, build_student, load_teacher, same_vocabulary
from nlptransfer.distill_losses import parse_layer_map
from nlptransfer.distill_model import DistillationModel, DistillCollator
from nlptransfer.hub import push_run
from nlptransfer.tasks import TASK_KINDS
from nlptransfer.teacher_targets import cached_teacher_targets, read_transfer_set


def main(argv=None):
    model_args, data_args, args, distill_args = parse_args(
        ModelArguments, DataArguments, TrainArguments, DistillArguments, args=argv
    )
    check_output_dir(args.output_dir, args)
    accelerator = start_run(args)

    # teacher and student; the student takes the teacher's label names, so their outputs line up
    teacher = load_teacher(distill_args.teacher_name_or_path, distill_args.teacher_task)
    spec = TaskSpec.from_data_args(data_args)
    teacher.check_task(spec)
    student, tokenizer, base_model = build_student(teacher, distill_args.layers(), model_args, spec)
    live = distill_args.matches_states  # hidden states / attention maps: the teacher runs beside the student
    if live and not same_vocabulary(teacher.tokenizer, tokenizer):
        raise ConfigError(
            "--hidden_loss / --attention_weight compare token by token and need the teacher's tokenizer; this "
            "student's differs. Distil logits only, or cut the student from the teacher with --student_layers"
        )

    # data; the teacher's logits on the train rows, once (main process first: the others read its cache)
    status, teacher_seconds = ("live" if live else "none"), 0.0
    with accelerator.main_process_first():
        splits = load_splits(data_args, args.seed)
        encoded = encode_splits(splits, spec, tokenizer, data_args.max_seq_length)
        train_features = encoded["train"].features
        if distill_args.alpha > 0 and not live:
            cache_dir = distill_args.teacher_cache_dir or f"{args.output_dir}/teacher_cache"
            label_with_teacher = partial(
                cached_teacher_targets,
                teacher,
                spec=spec,
                max_length=data_args.max_seq_length,
                cache_dir=cache_dir if distill_args.cache_teacher else None,
                batch_size=distill_args.teacher_batch_size,
                device=accelerator.device,
                progress=not args.disable_tqdm and accelerator.is_local_main_process,
            )
            start = time.perf_counter()
            targets, status = label_with_teacher(splits["train"])
            train_features = targets.attach(encoded["train"])
            if distill_args.transfer_file:  # unlabelled rows: the teacher's soft targets are all they teach
                splits["transfer"] = read_transfer_set(
                    distill_args.transfer_file, spec, distill_args.max_transfer_samples
                )
                transfer = encode_splits({"train": splits["transfer"]}, spec, tokenizer, data_args.max_seq_length)
                train_features += without_labels(label_with_teacher(splits["transfer"])[0].attach(transfer["train"]))
            teacher_seconds = time.perf_counter() - start
    accelerator.print({split: len(records) for split, records in splits.items()}, f"teacher targets: {status}")

    # the student in training: gold loss, soft targets and (live) state matching in one forward
    teacher_source, layers = teacher.source, (student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    teacher = teacher if live else None  # its logits are in the batches now: free it
    model = DistillationModel(
        student,
        alpha=distill_args.alpha,
        temperature=distill_args.temperature,
        kd_loss=distill_args.kd_loss_for(spec.kind),
        teacher=teacher,
        hidden_loss=distill_args.hidden_loss,
        hidden_weight=distill_args.hidden_weight,
        attention_weight=distill_args.attention_weight,
        layer_map=parse_layer_map(distill_args.layer_map, *layers) if live else (),
    )
    trainable, total = count_parameters(student)
    accelerator.print(f"student parameters: {total:,} ({student.config.num_hidden_layers} layers)")
    collator = DistillCollator(tokenizer.pad_token_id)
    train_loader = train_dataloader(
        train_features, args.per_device_train_batch_size, collator, args.seed, args.group_by_length
    )
    eval_splits = [split for split in ("validation", "test") if split in encoded]
    eval_loaders = [
        eval_dataloader(encoded[split].features, args.per_device_eval_batch_size, collator) for split in eval_splits
    ]
    optimizer = build_optimizer(model, args)
    model, optimizer, train_loader, *eval_loaders = accelerator.prepare(model, optimizer, train_loader, *eval_loaders)
    steps = total_steps(len(train_loader), args)
    scheduler = accelerator.prepare(build_scheduler(optimizer, steps, args, accelerator.num_processes))
    if args.trackers:  # trackers take scalars and strings only
        hparams = {**vars(model_args), **vars(data_args), **vars(args), **vars(distill_args)}
        accelerator.init_trackers("nlptransfer-distill", config={k: v for k, v in hparams.items() if v is not None})
    evaluate_on = {
        split: partial(evaluate, accelerator, model, loader, encoded[split], spec)
        for split, loader in zip(eval_splits, eval_loaders)
    }

    # train: select on validation only, never on test
    trainer = Trainer(
        accelerator,
        model,
        optimizer,
        scheduler,
        train_loader,
        args,
        evaluate=evaluate_on.get("validation"),
        metric_for_best_model=(args.metric_for_best_model or TASK_KINDS[spec.kind].default_metric)
        if "validation" in evaluate_on
        else None,
        max_steps=steps,
    )
    results = trainer.train()
    trainer.load_best()
    for split, evaluate_split in evaluate_on.items():
        results.update(prefixed(evaluate_split(), "eval" if split == "validation" else split))
    results.update(
        trainable_parameters=trainable,
        total_parameters=total,
        student_layers=student.config.num_hidden_layers,
        teacher=distill_args.teacher_name_or_path,
        teacher_source=teacher_source,
        teacher_targets=status,
        teacher_targets_seconds=teacher_seconds,
        transfer_rows=len(splits.get("transfer", ())),
        alpha=distill_args.alpha,
        temperature=distill_args.temperature,
        parameters_in_sync=parameters_in_sync(accelerator, model),  # DDP kept every rank identical
    )

    # the saved model is the plain student: it loads in a `pipeline`
    student = accelerator.unwrap_model(model).student
    save_run(accelerator, args.output_dir, student, tokenizer, results, spec, base_model)
    if accelerator.is_main_process:
        save_config(f"{args.output_dir}/run_config.yaml", model_args, data_args, args, distill_args)
        headline = [k for k in results if k.split("_", 1)[-1] in ("accuracy", "f1", "pearson", "runtime")]
        print("\n".join(f"{key:>32}: {results[key]:.4f}" for key in sorted(headline)))
        print(f"saved to {args.output_dir}")

    # free the models before ending: gloo can hang at exit otherwise
    del model, optimizer, trainer, evaluate_on, student, teacher
    accelerator.free_memory()
    accelerator.end_training()
    if args.push_to_hub and accelerator.is_main_process:  # after saving: a failed push loses nothing
        print(f"pushed to {push_run(args.output_dir, args.hub_model_id, private=args.hub_private)}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
