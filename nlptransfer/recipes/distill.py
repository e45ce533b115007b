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

import time

from nlptransfer.batching import train_dataloader
from nlptransfer.config import DataArguments, ModelArguments, TrainArguments, parse_args
from nlptransfer.data import encode_splits, load_splits
from nlptransfer.distill import (
    DistillArguments,
    DistillationModel,
    DistillCollator,
    build_student,
    load_teacher,
    teacher_labelled_features,
)
from nlptransfer.errors import ConfigError, run_main
from nlptransfer.lifecycle import finish_run, fit, task_eval_sets
from nlptransfer.modeling import count_parameters
from nlptransfer.runs import save_run
from nlptransfer.sharding import parameters_in_sync, unsharded_loading
from nlptransfer.tasks import TaskSpec
from nlptransfer.training import start_run


def main(argv=None):
    model_args, data_args, args, distill_args = parse_args(
        ModelArguments, DataArguments, TrainArguments, DistillArguments, args=argv
    )
    if (
        data_args.class_weights not in (None, "none") or data_args.task_type == "multilabel"
    ):  # its gold loss is the model's own, KL a softmax
        raise ConfigError("the distill recipe takes neither --class_weights nor --task_type multilabel (yet)")
    configs = [model_args, data_args, distill_args]
    accelerator = start_run(args, "nlptransfer-distill", configs)

    # teacher and student; the student takes the teacher's label names, so their outputs line up
    with unsharded_loading(accelerator):  # the frozen teacher is whole on every process, even under ZeRO-3
        teacher = load_teacher(distill_args.teacher_name_or_path, distill_args.teacher_task)
    spec = TaskSpec.from_data_args(data_args)
    teacher.check_task(spec)
    student, tokenizer, base_model = build_student(teacher, distill_args, model_args, spec)
    live = distill_args.matches_states  # hidden states / attention maps: the teacher runs beside the student

    # data; the teacher's logits on the train rows, once (main process first: the others read its cache)
    status, teacher_seconds = ("live" if live else "none"), 0.0
    with accelerator.main_process_first():
        splits = load_splits(data_args, args.seed)
        encoded = encode_splits(
            splits, spec, tokenizer, data_args.max_seq_length, num_proc=data_args.preprocessing_num_workers
        )
        train_features = encoded["train"].features
        if distill_args.alpha > 0 and not live:
            start = time.perf_counter()
            train_features, status = teacher_labelled_features(
                teacher,
                splits,
                encoded,
                spec,
                tokenizer,
                data_args.max_seq_length,
                distill_args,
                distill_args.teacher_cache_dir or f"{args.output_dir}/teacher_cache",
                device=accelerator.device,
                progress=not args.disable_tqdm and accelerator.is_local_main_process,
            )
            teacher_seconds = time.perf_counter() - start
    accelerator.print({split: len(records) for split, records in splits.items()}, f"teacher targets: {status}")

    # the student in training: gold loss, soft targets and (live) state matching in one forward
    teacher_source = teacher.source
    model = DistillationModel.from_arguments(student, teacher, distill_args, spec.kind)
    del teacher
    trainable, total = count_parameters(student)
    accelerator.print(f"student parameters: {total:,} ({student.config.num_hidden_layers} layers)")
    collator = DistillCollator(tokenizer.pad_token_id, args.pad_multiple(accelerator.device))
    loading = args.dataloader_options(accelerator.device)
    train_loader = train_dataloader(
        train_features, args.per_device_train_batch_size, collator, args.seed, args.group_by_length, **loading
    )
    eval_sets = task_eval_sets(
        accelerator, encoded, spec, collator, args.per_device_eval_batch_size, loader_options=loading
    )
    fitted = fit(accelerator, model, train_loader, args, eval_sets)
    fitted.results.update(
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
        parameters_in_sync=parameters_in_sync(accelerator, fitted.model),  # DDP kept every rank identical
    )
    del model, student

    # the saved model is the plain student (the wrapper saves its `student`): it loads in a `pipeline`
    def save(output_dir):
        return save_run(accelerator, output_dir, fitted.model, tokenizer, spec, base_model)

    return finish_run(accelerator, args, fitted, save=save, configs=configs)


if __name__ == "__main__":
    run_main(main)
