"""Fine-tune a pretrained encoder for text classification (single sentences or pairs), regression or NER.

    accelerate launch recipes/finetune.py \
        --train_file ../shared/data/trec/train.jsonl --test_file ../shared/data/trec/test.jsonl \
        --num_train_epochs 3 --output_dir runs/trec

    accelerate launch recipes/finetune.py --task_type ner \
        --train_file ../shared/data/conll2003/eng.train --validation_file ../shared/data/conll2003/eng.testa \
        --test_file ../shared/data/conll2003/eng.testb --output_dir runs/conll

Every flag can also come from `--config file.yaml`; `--help` lists them all.
"""

from nlptransfer.adapters import AdapterArguments, apply_adapter
from nlptransfer.batching import PaddingCollator, train_dataloader
from nlptransfer.config import DataArguments, ModelArguments, TrainArguments, TransferArguments, parse_args
from nlptransfer.data import encode_splits, load_splits
from nlptransfer.errors import ConfigError, run_main
from nlptransfer.fusion import FusionArguments, apply_fusion, fold_fusion, mean_fusion_weights
from nlptransfer.lifecycle import finish_run, fit, task_eval_sets, weighted_task_loss
from nlptransfer.modeling import count_parameters, load_model_for_task, load_tokenizer, save_merged
from nlptransfer.runs import save_run
from nlptransfer.sharding import unsharded_loading
from nlptransfer.strategies import apply_strategies
from nlptransfer.tasks import TaskSpec
from nlptransfer.training import start_run


def main(argv=None):
    model_args, data_args, args, adapter_args, transfer_args, fusion_args = configs = parse_args(
        ModelArguments, DataArguments, TrainArguments, AdapterArguments, TransferArguments, FusionArguments, args=argv
    )
    if fusion_args.enabled and adapter_args.enabled:
        raise ConfigError("--source_adapters (fusion of trained adapters) cannot be combined with --peft")
    configs = [c for c in configs if c is not args]
    accelerator = start_run(args, "nlptransfer", configs)

    # data: read, validate, label set from train, tokenize (once, main process first)
    spec = TaskSpec.from_data_args(data_args)
    tokenizer = load_tokenizer(model_args)
    with accelerator.main_process_first():
        splits = load_splits(data_args, args.seed, streaming=True)
        encoded = encode_splits(
            splits,
            spec,
            tokenizer,
            data_args.max_seq_length,
            data_args.class_weights,
            data_args.preprocessing_num_workers,
        )
    accelerator.print({split: len(records) for split, records in splits.items()}, f"labels: {spec.labels}")

    # model: adapters train with the head while the encoder stays frozen; strategies freeze before the optimizer
    model = load_model_for_task(model_args, spec)
    if adapter_args.enabled:
        model = apply_adapter(model, adapter_args, spec.kind, model_args.model_name_or_path)
    fusion = apply_fusion(model, fusion_args, model_args.model_name_or_path) if fusion_args.enabled else {}
    apply_strategies(model, transfer_args)
    trainable, total = count_parameters(model)
    accelerator.print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")

    # batches; every split but train is scored, and validation (if any) selects the best model
    collator = PaddingCollator(tokenizer.pad_token_id, args.pad_multiple(accelerator.device))
    loading = args.dataloader_options(accelerator.device)
    train_loader = train_dataloader(
        encoded["train"].features,
        args.per_device_train_batch_size,
        collator,
        args.seed,
        args.group_by_length,
        **loading,
    )
    eval_sets = task_eval_sets(
        accelerator, encoded, spec, collator, args.per_device_eval_batch_size, loader_options=loading
    )
    fitted = fit(
        accelerator, model, train_loader, args, eval_sets, transfer=transfer_args, task_loss=weighted_task_loss(spec)
    )
    results = fitted.results
    results.update(trainable_parameters=trainable, total_parameters=total)
    if fusion:  # the learned mix is folded into plain weights: the saved model is an ordinary folder
        results.update(fusion, fusion_mean_weights=mean_fusion_weights(accelerator.unwrap_model(fitted.model)))
        fold_fusion(accelerator.unwrap_model(fitted.model))

    def save(output_dir):  # the model (or adapter + head), tokenizer and label names; --merge: a merged copy
        added = save_run(accelerator, output_dir, fitted.model, tokenizer, spec, model_args.model_name_or_path)
        if adapter_args.enabled and adapter_args.merge and accelerator.is_main_process:
            with unsharded_loading(accelerator):  # merges what was saved: right under every engine
                save_merged(output_dir, tokenizer)
        return added

    del model  # the prepared model lives in `fitted` until finish_run frees it
    return finish_run(accelerator, args, fitted, save=save, configs=configs)


if __name__ == "__main__":
    run_main(main)
