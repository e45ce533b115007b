"""Adapt a sentiment classifier from a labelled source domain to an unlabelled target domain (DANN).

    accelerate launch recipes/domain_adapt.py \
        --source_file ../shared/data/amazon_multidomain/books.jsonl \
        --target_file ../shared/data/amazon_multidomain/kitchen.jsonl \
        --method dann --output_dir runs/books2kitchen

Each domain file is split by `--split_seed` into train and `--test_size` test rows (1,600 / 400 for
the Amazon domains, as in the literature). `--method`:
  source_only  train on the source labels; the target is only scored
  dann         the same, plus the target's train text *without labels* through a domain classifier
               behind a gradient-reversal layer, and (--target_im_weight) information maximisation
               on the classifier's target predictions
  target_only  train on the target's own labels: the in-domain ceiling
Model selection never uses target labels except in target_only: every method selects on a
held-out `--validation_split_percentage` of its labelled training domain (the source, for DANN).
Runs trained on the source also report `dev_risk`, Deep Embedded Validation's estimate of the target
risk from source validation losses weighted by how target-like each text is (no target label used):
lower is better, so settings (e.g. --domain_loss_weight) can be chosen by it; it ranks settings with
information maximisation poorly (they are more confident, so their weighted source loss is higher).
The target test rows give `test_*`; the source test rows give `source_test_*`.
"""

import sys
from functools import partial

from nlptransfer import (
    ConfigError,
    ModelArguments,
    PaddingCollator,
    TaskSpec,
    TrainArguments,
    Trainer,
    build_optimizer,
    build_scheduler,
    carve_validation,
    check_output_dir,
    count_parameters,
    encode_splits,
    eval_dataloader,
    evaluate,
    load_model_for_task,
    load_tokenizer,
    parse_args,
    prefixed,
    read_file,
    save_config,
    save_run,
    start_run,
    total_steps,
    train_dataloader,
)
from nlptransfer.batching import without_labels
from nlptransfer.domain import (
    DOMAIN_METHODS,
    DomainAdversarialModel,
    DomainArguments,
    deep_embedded_validation,
    has_labels,
    split_domain,
    unlabelled,
    with_domain,
)


def main(argv=None):
    model_args, domain_args, args = parse_args(ModelArguments, DomainArguments, TrainArguments, args=argv)
    method = DOMAIN_METHODS[domain_args.method]
    check_output_dir(args.output_dir, args)
    accelerator = start_run(args)

    # data: each domain split into train/test by a seed; validation carved from the labelled domain
    spec = TaskSpec(
        name="sentiment",
        kind="classification",
        text_column=domain_args.text_column_name,
        label_column=domain_args.label_column_name,
    )
    tokenizer = load_tokenizer(model_args)
    with accelerator.main_process_first():
        seed, size = domain_args.split_seed, domain_args.test_size
        source, source_test = split_domain(read_file(domain_args.source_file), size, seed)
        target = read_file(domain_args.target_file)
        splits = {"source_test": source_test}
        if has_labels(target, spec):  # else all of it is unlabelled training text and nothing is scored
            target, splits["test"] = split_domain(target, size, seed)
        elif method.labelled == "target":
            raise ConfigError(f"--method {domain_args.method} needs labels in --target_file {target.source}")
        labelled = source if method.labelled == "source" else target
        splits["train"], splits["validation"] = carve_validation(
            labelled, domain_args.validation_split_percentage, args.seed
        )
        encoded = encode_splits(splits, spec, tokenizer, domain_args.max_seq_length)
        if method.labelled == "source":  # the target's train text, labels (if any) replaced: it stays unlabelled
            splits["target_train"] = unlabelled(target, spec)
            encoded.update(
                encode_splits({"target_train": splits["target_train"]}, spec, tokenizer, domain_args.max_seq_length)
            )
    accelerator.print({split: len(records) for split, records in splits.items()}, f"labels: {spec.labels}")

    # model: the classifier, wrapped with a domain classifier behind a GRL for DANN
    model = load_model_for_task(model_args, spec)
    train_features = encoded["train"].features
    batch_size = args.per_device_train_batch_size
    if method.adversarial:
        model = DomainAdversarialModel(
            model, domain_args.domain_hidden_size, domain_args.domain_loss_weight, domain_args.target_im_weight
        )
        # source rows with labels and target rows without, shuffled together: twice the rows per batch,
        # so each step sees about a batch of labelled source text, as source_only does
        target_rows = without_labels(encoded["target_train"].features)
        train_features = with_domain(train_features, 0) + with_domain(target_rows, 1)
        batch_size *= 2
    trainable, total = count_parameters(model)
    accelerator.print(f"trainable parameters: {trainable:,} of {total:,}")
    collator = PaddingCollator(tokenizer.pad_token_id)
    train_loader = train_dataloader(train_features, batch_size, collator, args.seed, args.group_by_length)
    eval_splits = [split for split in ("validation", "test", "source_test") if split in encoded]
    eval_loaders = [
        eval_dataloader(encoded[split].features, args.per_device_eval_batch_size, collator) for split in eval_splits
    ]
    own_lr = []  # the domain classifier at its own LR, if given (else in the head's group)
    if method.adversarial and domain_args.domain_learning_rate:
        own_lr = [(model.domain_head.parameters(), domain_args.domain_learning_rate)]
    optimizer = build_optimizer(model, args, own_lr=own_lr)
    model, optimizer, train_loader, *eval_loaders = accelerator.prepare(model, optimizer, train_loader, *eval_loaders)
    steps = total_steps(len(train_loader), args)
    scheduler = accelerator.prepare(build_scheduler(optimizer, steps, args, accelerator.num_processes))
    evaluate_on = {
        split: partial(evaluate, accelerator, model, loader, encoded[split], spec)
        for split, loader in zip(eval_splits, eval_loaders)
    }

    def grl_warmup(trainer: Trainer) -> None:  # reversal strength 0 -> 1 over training (DANN's schedule)
        accelerator.unwrap_model(trainer.model).set_progress(trainer.state.step / steps, domain_args.grl_gamma)

    trainer = Trainer(
        accelerator,
        model,
        optimizer,
        scheduler,
        train_loader,
        args,
        evaluate=evaluate_on["validation"],
        metric_for_best_model=args.metric_for_best_model or "accuracy",
        max_steps=steps,
        callbacks=[grl_warmup] if method.adversarial else [],
    )
    results = trainer.train()
    trainer.load_best()
    for split, evaluate_split in evaluate_on.items():
        results.update(prefixed(evaluate_split(), "eval" if split == "validation" else split))
    results.update(method=domain_args.method, trainable_parameters=trainable, total_parameters=total)
    classifier = accelerator.unwrap_model(model)
    classifier = classifier.classifier if isinstance(classifier, DomainAdversarialModel) else classifier
    if method.labelled == "source":  # a target-risk estimate that needs no target label, to compare runs by
        results["dev_risk"] = deep_embedded_validation(
            classifier, collator, encoded["train"], encoded["target_train"], encoded["validation"]
        )

    # the saved model is the plain classifier: it loads in a `pipeline`
    save_run(accelerator, args.output_dir, classifier, tokenizer, results, spec, model_args.model_name_or_path)
    if accelerator.is_main_process:
        save_config(f"{args.output_dir}/run_config.yaml", model_args, domain_args, args)
        for key in ("eval_accuracy", "test_accuracy", "source_test_accuracy", "train_runtime"):
            if key in results:
                print(f"{key:>24}: {results[key]:.4f}")
        if "dev_risk" in results:
            print(f"{'dev_risk':>24}: {results['dev_risk']:.4f}")
        print(f"saved to {args.output_dir}")

    del model, optimizer, trainer, evaluate_on, classifier
    accelerator.free_memory()
    accelerator.end_training()
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
