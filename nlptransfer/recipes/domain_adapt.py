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
risk from source validation losses weighted by how target-like each text is (no target label used),
and `dev_error`, the same estimate of the target *error* (0-1 loss): lower is better, so settings (e.g.
--domain_loss_weight) can be chosen by them. `dev_risk` ranks settings with information maximisation
poorly (they are more confident, so their weighted source cross-entropy is higher); `dev_error` does not.
`dev_ess`, `dev_power` and `dev_domain_log_loss` say how much an estimate rests on (see the guide).
The target test rows give `test_*`; the source test rows give `source_test_*`.
"""

from torch.utils.data import ConcatDataset

from nlptransfer.batching import PaddingCollator, train_dataloader, without_labels
from nlptransfer.config import ModelArguments, TrainArguments, parse_args
from nlptransfer.data import carve_validation, encode_splits
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
from nlptransfer.errors import ConfigError, run_main
from nlptransfer.lifecycle import finish_run, fit, task_eval_sets
from nlptransfer.modeling import count_parameters, load_model_for_task, load_tokenizer
from nlptransfer.readers import read_file
from nlptransfer.runs import save_run
from nlptransfer.tasks import TaskSpec
from nlptransfer.training import start_run


def main(argv=None):
    model_args, domain_args, args = parse_args(ModelArguments, DomainArguments, TrainArguments, args=argv)
    method = DOMAIN_METHODS[domain_args.method]
    configs = [model_args, domain_args]
    accelerator = start_run(args, "nlptransfer-domain", configs)

    # data: each domain split into train/test by a seed; validation carved from the labelled domain
    columns = {"text_column": domain_args.text_column_name, "label_column": domain_args.label_column_name}
    spec = TaskSpec(name="sentiment", kind="classification", **columns)
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
    train_features, batch_size, own_lr, callbacks = encoded["train"].features, args.per_device_train_batch_size, [], []
    if method.adversarial:
        model = DomainAdversarialModel(
            model, domain_args.domain_hidden_size, domain_args.domain_loss_weight, domain_args.target_im_weight
        )
        # source rows with labels and target rows without, shuffled together: twice the rows per batch,
        # so each step sees about a batch of labelled source text, as source_only does
        target_rows = without_labels(encoded["target_train"].features)
        train_features = ConcatDataset([with_domain(train_features, 0), with_domain(target_rows, 1)])
        batch_size *= 2
        if domain_args.domain_learning_rate:  # the domain classifier at its own LR (else in the head's group)
            own_lr = [(model.domain_head.parameters(), domain_args.domain_learning_rate)]
        # reversal strength 0 -> 1 over training (DANN's schedule)
        callbacks = [lambda t: t.unwrapped.set_progress(t.state.step / t.max_steps, domain_args.grl_gamma)]
    trainable, total = count_parameters(model)
    accelerator.print(f"trainable parameters: {trainable:,} of {total:,}")
    collator = PaddingCollator(tokenizer.pad_token_id, args.pad_multiple(accelerator.device))
    loading = args.dataloader_options(accelerator.device)
    train_loader = train_dataloader(train_features, batch_size, collator, args.seed, args.group_by_length, **loading)
    splits_to_score = ("validation", "test", "source_test")
    eval_sets = task_eval_sets(
        accelerator, encoded, spec, collator, args.per_device_eval_batch_size, splits_to_score, loading
    )
    fitted = fit(accelerator, model, train_loader, args, eval_sets, callbacks=callbacks, own_lr=own_lr)
    results = fitted.results
    results.update(method=domain_args.method, trainable_parameters=trainable, total_parameters=total)
    if method.labelled == "source":  # a target-risk estimate that needs no target label, to compare runs by
        classifier = model.classifier if method.adversarial else model
        results |= deep_embedded_validation(
            classifier, collator, encoded["train"], encoded["target_train"], encoded["validation"]
        )
    del model

    # the saved model is the plain classifier (the DANN wrapper saves its `classifier`): it loads in a `pipeline`
    def save(output_dir):
        return save_run(accelerator, output_dir, fitted.model, tokenizer, spec, model_args.model_name_or_path)

    return finish_run(accelerator, args, fitted, save=save, configs=configs)


if __name__ == "__main__":
    run_main(main)
