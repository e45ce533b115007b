"""Meta-learn an encoder over N-way K-shot episodes (first-order MAML or Reptile); save a normal encoder folder.

    python recipes/meta.py --train_file ../shared/data/trec/train.jsonl --label_column_name fine_label \
        --algorithm fomaml --n_way 5 --k_shot 5 --meta_steps 200 --output_dir runs/meta_trec

    python recipes/finetune.py --model_name_or_path runs/meta_trec --train_file ... --output_dir ...

The classes of --label_column_name are split by --class_split_seed into meta-train and meta-test
groups; meta-training sees only rows of the meta-train classes. The folder holds the encoder and
tokenizer (`AutoModel.from_pretrained` loads it), `nlptransfer_meta.json` (both class groups and the
settings), `all_results.json` and `run_config.yaml`. With --eval_episodes N, N meta-test episodes are
scored before and after meta-training (reported, never selected on). `--config file.yaml` works too.
"""

import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm
from transformers import AutoModel

from nlptransfer import (
    ModelArguments,
    check_output_dir,
    load_tokenizer,
    parse_args,
    read_file,
    resolve_model,
    save_config,
)
from nlptransfer.episodes import ClassPool, EpisodeSampler, mean_ci95, split_classes
from nlptransfer.meta import (
    META_ALGORITHMS,
    META_FILE,
    EpisodeLearner,
    MetaArguments,
    episode_accuracy,
    start_meta_run,
)

logger = logging.getLogger("recipes.meta")


def main(argv=None):
    model_args, args = parse_args(ModelArguments, MetaArguments, args=argv)
    check_output_dir(args.output_dir, args)
    device = start_meta_run(args)

    # data: every row tokenized once; the classes split by a seed into two groups that never meet
    tokenizer = load_tokenizer(model_args)
    pool = ClassPool.from_records(
        read_file(args.train_file), tokenizer, args.max_seq_length, args.text_column_name, args.label_column_name
    )
    meta_train, meta_test = split_classes(pool.classes, args.meta_test_classes, args.class_split_seed)
    train_sampler = EpisodeSampler(pool.subset(meta_train).class_rows, args.n_way, args.k_shot, args.query, args.seed)
    print(f"{len(meta_train)} meta-train classes ({len(train_sampler.skipped)} too small: {train_sampler.skipped})")
    print(f"{len(meta_test)} meta-test classes: {meta_test}")

    # model: the plain encoder; heads are made per episode and thrown away
    encoder = AutoModel.from_pretrained(
        resolve_model(model_args.model_name_or_path),
        revision=model_args.revision,
        trust_remote_code=model_args.trust_remote_code,
    ).to(device)
    learner = EpisodeLearner(encoder, pool, args.head_init, args.inner_optimizer)
    algorithm = META_ALGORITHMS[args.algorithm](learner, args.inner_steps, args.inner_lr, args.outer_lr)

    def score_meta_test() -> dict:  # the same episodes before and after, scored only
        sampler = EpisodeSampler(pool.subset(meta_test).class_rows, args.n_way, args.k_shot, args.query, args.seed)
        steps, lr = args.eval_budget
        mean, ci = mean_ci95(
            [episode_accuracy(learner, sampler.episode(i), steps, lr) for i in range(args.eval_episodes)]
        )
        return {"accuracy": mean, "accuracy_ci95": ci, "episodes": args.eval_episodes, "skipped": sampler.skipped}

    results = {}
    if args.eval_episodes:
        results["meta_test_start"] = score_meta_test()

    # meta-train: meta-batch b holds episodes b*B .. b*B+B-1 of the meta-train classes
    start, history, window = time.perf_counter(), [], []
    for step in tqdm(range(args.meta_steps), desc="meta-steps", disable=args.disable_tqdm):
        batch = [train_sampler.episode(step * args.meta_batch_size + i) for i in range(args.meta_batch_size)]
        window.append(algorithm.step(batch))
        if (step + 1) % args.logging_steps == 0 or step + 1 == args.meta_steps:
            logged = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            history.append({"meta_step": step + 1, **logged})
            logger.info("meta-step %d: %s", step + 1, logged)
            window = []
    results.update(
        meta_train_runtime=time.perf_counter() - start,
        meta_steps=args.meta_steps,
        outer_lr=algorithm.outer_lr,
        meta_train_query_accuracy=history[-1]["query_accuracy"],
        history=history,
    )
    if args.eval_episodes:
        results["meta_test"] = score_meta_test()

    # save: a plain encoder folder that recipes/finetune.py (or AutoModel) starts from
    output = Path(args.output_dir)
    encoder.save_pretrained(output)
    tokenizer.save_pretrained(output)
    meta = {
        "base_model": model_args.model_name_or_path,
        "algorithm": args.algorithm,
        "label_column": args.label_column_name,
        "meta_train_classes": meta_train,
        "meta_test_classes": meta_test,
        "settings": asdict(args),
    }
    (output / META_FILE).write_text(json.dumps(meta, indent=2))
    (output / "all_results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    save_config(output / "run_config.yaml", model_args, args)
    print(f"meta-train query accuracy (last logged window): {results['meta_train_query_accuracy']:.4f}")
    for key in ("meta_test_start", "meta_test"):
        if key in results:
            print(f"{key}: {results[key]['accuracy']:.4f} ± {results[key]['accuracy_ci95']:.4f}")
    print(f"saved to {output}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
