"""Meta-learn an encoder over N-way K-shot episodes (first-order MAML or Reptile); save a normal encoder folder.

    python recipes/meta.py --train_file ../shared/data/trec/train.jsonl --label_column_name fine_label \
        --algorithm fomaml --n_way 5 --k_shot 5 --meta_steps 200 --output_dir runs/meta_trec

    python recipes/finetune.py --model_name_or_path runs/meta_trec --train_file ... --output_dir ...

The classes of --label_column_name are split by --class_split_seed into meta-train and meta-test
groups (and, with --meta_val_classes, a meta-validation group to choose settings on); meta-training sees
only rows of the meta-train classes. The folder holds the encoder and tokenizer (`AutoModel.from_pretrained`
loads it), `nlptransfer_meta.json` (the class groups and the settings), `all_results.json` and
`run_config.yaml`. With --eval_episodes N, N meta-test episodes are scored before and after meta-training
(reported, never selected on). `--config file.yaml` works too.
"""

import json
import time
from dataclasses import asdict

from tqdm.auto import tqdm
from transformers import AutoModel

from nlptransfer.config import ModelArguments, RunArguments, parse_args
from nlptransfer.errors import run_main
from nlptransfer.lifecycle import Fitted, finish_run
from nlptransfer.meta import ClassPool, EpisodeLearner, MetaArguments, score_episodes, split_meta_classes
from nlptransfer.modeling import load_tokenizer
from nlptransfer.readers import read_file
from nlptransfer.resolve import resolve_model
from nlptransfer.runs import META_FILE
from nlptransfer.training import start_run


def main(argv=None):
    model_args, meta_args, args = parse_args(ModelArguments, MetaArguments, RunArguments, args=argv)
    accelerator = start_run(args, "nlptransfer-meta", configs := [model_args, meta_args])

    # data: every row tokenized once; the classes split by a seed into two groups that never meet
    tokenizer = load_tokenizer(model_args)
    pool = ClassPool.from_records(
        read_file(meta_args.train_file),
        tokenizer,
        meta_args.max_seq_length,
        meta_args.text_column_name,
        meta_args.label_column_name,
    )
    meta_train, meta_val, meta_test = split_meta_classes(
        pool.classes, meta_args.meta_test_classes, meta_args.meta_val_classes, meta_args.class_split_seed
    )
    train_sampler = meta_args.sampler(pool, meta_train, args.seed)
    print(f"{len(meta_train)} meta-train classes ({len(train_sampler.skipped)} too small: {train_sampler.skipped})")
    if meta_val:
        print(f"{len(meta_val)} meta-validation classes (held out of meta-training): {meta_val}")
    print(f"{len(meta_test)} meta-test classes: {meta_test}")

    # model: the plain encoder; heads are made per episode and thrown away
    encoder = AutoModel.from_pretrained(
        resolve_model(model_args.model_name_or_path),
        revision=model_args.revision,
        trust_remote_code=model_args.trust_remote_code,
    ).to(accelerator.device)
    learner = EpisodeLearner(encoder, pool, meta_args.head_init, meta_args.inner_optimizer)
    algorithm = meta_args.build_algorithm(learner)

    def score_meta_test() -> dict:  # the same episodes before and after, scored only
        sampler = meta_args.sampler(pool, meta_test, args.seed)
        return score_episodes(learner, sampler, meta_args.eval_episodes, *meta_args.eval_budget)

    results = {"meta_test_start": score_meta_test()} if meta_args.eval_episodes else {}

    # meta-train: meta-batch b holds episodes b*B .. b*B+B-1 of the meta-train classes
    start, history, window, batch_size = time.perf_counter(), [], [], meta_args.meta_batch_size
    for step in tqdm(range(meta_args.meta_steps), desc="meta-steps", disable=args.disable_tqdm):
        window.append(algorithm.step([train_sampler.episode(step * batch_size + i) for i in range(batch_size)]))
        if (step + 1) % meta_args.logging_steps == 0 or step + 1 == meta_args.meta_steps:
            logged = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            history.append({"meta_step": step + 1, **logged})
            accelerator.log({f"train/{k}": v for k, v in logged.items()}, step=step + 1)
            window = []
    results.update(
        meta_train_runtime=time.perf_counter() - start,
        meta_steps=meta_args.meta_steps,
        outer_lr=algorithm.outer_lr,
        meta_train_query_accuracy=history[-1]["query_accuracy"],
        history=history,
    )
    if meta_args.eval_episodes:
        results["meta_test"] = score_meta_test()
        results.update(meta_test_start_accuracy=results["meta_test_start"]["accuracy"])
        results.update(meta_test_accuracy=results["meta_test"]["accuracy"])

    # save: a plain encoder folder that recipes/finetune.py (or AutoModel) starts from
    def save(output_dir):
        output_dir.mkdir(parents=True, exist_ok=True)
        encoder.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        meta = {
            "base_model": model_args.model_name_or_path,
            "algorithm": meta_args.algorithm,
            "label_column": meta_args.label_column_name,
            "meta_train_classes": meta_train,
            "meta_val_classes": meta_val,
            "meta_test_classes": meta_test,
            "settings": {**asdict(meta_args), "seed": args.seed},
        }
        (output_dir / META_FILE).write_text(json.dumps(meta, indent=2))

    return finish_run(accelerator, args, Fitted(encoder, results, None), save=save, configs=configs)


if __name__ == "__main__":
    run_main(main)
