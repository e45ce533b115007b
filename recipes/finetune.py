"""Fine-tune a pretrained encoder for text classification (single sentences or pairs), regression or NER.

    accelerate launch recipes/finetune.py \
        --train_file ../shared/data/trec/train.jsonl --test_file ../shared/data/trec/test.jsonl \
        --num_train_epochs 3 --output_dir runs/trec

    accelerate launch recipes/finetune.py --task_type ner \
        --train_file ../shared/data/conll2003/eng.train --validation_file ../shared/data/conll2003/eng.testa \
        --test_file ../shared/data/conll2003/eng.testb --output_dir runs/conll

Every flag can also come from `--config file.yaml`; `--help` lists them all.
"""

import sys
from functools import partial

from nlptransfer import (
    ConfigError,
    DataArguments,
    LoraArgs,
    ModelArguments,
    PaddingCollator,
    TaskSpec,
    TrainArguments,
    Trainer,
    TransferArguments,
    apply_adapter,
    build_optimizer,
    build_scheduler,
    check_output_dir,
    count_parameters,
    encode_splits,
    eval_dataloader,
    evaluate,
    load_model_for_task,
    load_splits,
    load_tokenizer,
    merge_adapter,
    parse_args,
    prefixed,
    save_config,
    save_run,
    start_run,
    total_steps,
    train_dataloader,
)
from nlptransfer.fusion import FusionArguments, apply_fusion, fold_fusion, mean_fusion_weights
from nlptransfer.hub import push_run
from nlptransfer.strategies import L2SP, apply_strategies, gradual_unfreezing
from nlptransfer.tasks import TASK_KINDS


def main(argv=None):
    model_args, data_args, args, lora_args, transfer_args, fusion_args = parse_args(
        ModelArguments, DataArguments, TrainArguments, LoraArgs, TransferArguments, FusionArguments, args=argv
    )
    if fusion_args.enabled and lora_args.enabled:
        raise ConfigError("--source_adapters (fusion of trained adapters) cannot be combined with --peft")
    check_output_dir(args.output_dir, args)
    accelerator = start_run(args)

    # data: read, validate, label set from train, tokenize (once, main process first)
    spec = TaskSpec.from_data_args(data_args)
    tokenizer = load_tokenizer(model_args)
    with accelerator.main_process_first():
        splits = load_splits(data_args, args.seed)
        encoded = encode_splits(splits, spec, tokenizer, data_args.max_seq_length)
    accelerator.print({split: len(records) for split, records in splits.items()}, f"labels: {spec.labels}")

    # model and batches
    model = load_model_for_task(model_args, spec)
    if lora_args.enabled:  # adapters train; the encoder stays frozen, the head trains and is saved with them
        model = apply_adapter(model, lora_args, spec.kind, model_args.model_name_or_path)
    fusion = apply_fusion(model, fusion_args, model_args.model_name_or_path) if fusion_args.enabled else {}
    apply_strategies(model, transfer_args)  # --freeze / --freeze_layers, before the optimizer sees the weights
    trainable, total = count_parameters(model)
    accelerator.print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    collator = PaddingCollator(tokenizer.pad_token_id)
    train_loader = train_dataloader(
        encoded["train"].features, args.per_device_train_batch_size, collator, args.seed, args.group_by_length
    )
    eval_splits = [split for split in ("validation", "test") if split in encoded]
    eval_loaders = [
        eval_dataloader(encoded[split].features, args.per_device_eval_batch_size, collator) for split in eval_splits
    ]
    optimizer = build_optimizer(model, args, transfer_args.layerwise_lr_decay)
    model, optimizer, train_loader, *eval_loaders = accelerator.prepare(model, optimizer, train_loader, *eval_loaders)
    loaders = dict(zip(eval_splits, eval_loaders))
    steps = total_steps(len(train_loader), args)
    scheduler = build_scheduler(optimizer, steps, args, accelerator.num_processes)
    if every := transfer_args.unfreeze_every(len(train_loader), args.gradient_accumulation_steps):
        gradual_unfreezing(scheduler, every * accelerator.num_processes)
    scheduler = accelerator.prepare(scheduler)
    loss_terms = [L2SP(accelerator.unwrap_model(model), transfer_args.l2sp_beta)] if transfer_args.l2sp_beta else []
    if args.trackers:  # trackers take scalars and strings only
        hparams = {**vars(model_args), **vars(data_args), **vars(args)}
        accelerator.init_trackers("nlptransfer", config={k: v for k, v in hparams.items() if v is not None})

    evaluate_on = {
        split: partial(evaluate, accelerator, model, loader, encoded[split], spec) for split, loader in loaders.items()
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
        if "validation" in loaders
        else None,
        loss_terms=loss_terms,
        max_steps=steps,
    )
    results = trainer.train()
    trainer.load_best()
    for split, evaluate_split in evaluate_on.items():
        results.update(prefixed(evaluate_split(), "eval" if split == "validation" else "test"))

    results.update(trainable_parameters=trainable, total_parameters=total)
    if fusion:  # the learned mix is folded into plain weights: the saved model is an ordinary folder
        results.update(fusion, fusion_mean_weights=mean_fusion_weights(accelerator.unwrap_model(model)))
        fold_fusion(accelerator.unwrap_model(model))
    save_run(accelerator, args.output_dir, model, tokenizer, results, spec, model_args.model_name_or_path)
    if accelerator.is_main_process:
        save_config(
            f"{args.output_dir}/run_config.yaml", model_args, data_args, args, lora_args, transfer_args, fusion_args
        )
        if lora_args.enabled and lora_args.merge:
            merge_adapter(accelerator.unwrap_model(model)).save_pretrained(f"{args.output_dir}/merged")
            tokenizer.save_pretrained(f"{args.output_dir}/merged")
        headline = [
            k
            for k in results
            if k.split("_", 1)[-1]
            in ("accuracy", "f1", "precision", "recall", "pearson", "spearman", "mse", "runtime", "samples_per_second")
        ]
        print("\n".join(f"{key:>32}: {results[key]:.4f}" for key in sorted(headline)))
        print(f"saved to {args.output_dir}")

    # free the model before ending: gloo can hang at exit otherwise
    del model, optimizer, trainer, evaluate_on
    accelerator.free_memory()
    accelerator.end_training()
    if args.push_to_hub and accelerator.is_main_process:  # after saving: a failed push loses nothing
        print(f"pushed to {push_run(args.output_dir, args.hub_model_id, private=args.hub_private)}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
