"""The one training loop: accelerate's accumulate/clip/schedule, evaluation, best model, early
stopping, atomic resumable checkpoints. Recipes differ in the model and loss terms they pass in."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.scheduler import AcceleratedScheduler
from accelerate.utils import broadcast_object_list, set_seed
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from nlptransfer.allocator import ALLOCATORS
from nlptransfer.batching import has_length
from nlptransfer.config import RunArguments, TrainArguments
from nlptransfer.encoders import cpu_cores
from nlptransfer.errors import CheckpointNotFoundError, ConfigError, OutputDirError
from nlptransfer.sharding import check_engine, engine_of, load_weights, sharded_on_cpu
from nlptransfer.strategies import optimizer_groups

logger = logging.getLogger(__name__)

BEST_WEIGHTS = "model.safetensors"  # checkpoints/best_model/: the best validation weights of the run so far

LossTerm = Callable[[torch.nn.Module, dict, object], torch.Tensor]
"""An extra loss: (model, batch, outputs) -> scalar added to the task loss (L2-SP, distillation...)."""


@dataclass
class TrainState:
    """Everything beyond model/optimizer/scheduler/RNG that a resumed run must restore."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    train_loss_sum: float = 0.0
    train_loss_count: int = 0
    history: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def set_cpu_threads(accelerator: Accelerator, threads: int | None = None) -> None:
    """On CPU, give each process its share of the cores.

    `accelerate launch` without a config exports OMP_NUM_THREADS=1, which halves a one-process CPU
    run on two cores; `threads` (--cpu_threads) overrides the split.
    """
    if accelerator.device.type != "cpu":
        return
    torch.set_num_threads(threads or max(1, cpu_cores() // accelerator.num_processes))


def fast_bf16() -> bool:
    """True where bf16 matmuls are fast: a GPU with bf16, or a CPU with AMX or AVX512-BF16."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:  # private helpers, present in torch 2.x; without them assume no
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    except AttributeError:
        return False


def resolve_mixed_precision(choice: str | None) -> str | None:
    """`auto` leaves an `accelerate launch`/config choice alone (None), else picks bf16 where it is fast."""
    if choice not in (None, "auto"):
        return choice
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None
    return "bf16" if fast_bf16() else "no"


def start_run(args: RunArguments, project: str = "nlptransfer", configs: Sequence[object] = ()) -> Accelerator:
    """The Accelerator of a recipe run: the output folder checked first (nothing of the user's is
    overwritten), the allocator, accumulation, precision, trackers (with `configs` as their hyper-parameters);
    logs on the main process only; seeded; CPU threads split over the processes. Every recipe starts with this."""
    check_output_dir(args.output_dir, args.may_reuse_output_dir())
    ALLOCATORS[args.cpu_allocator]()  # before the model and data take memory
    kwargs = args.accelerator_kwargs()
    if "mixed_precision" in kwargs:
        kwargs["mixed_precision"] = resolve_mixed_precision(kwargs["mixed_precision"])
    accelerator = Accelerator(**kwargs, kwargs_handlers=sharded_on_cpu())
    check_engine(accelerator)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if accelerator.is_main_process else logging.ERROR,
    )
    datasets.utils.logging.set_verbosity_warning()
    transformers.utils.logging.set_verbosity_warning()
    set_seed(args.seed)
    set_cpu_threads(accelerator, args.cpu_threads)
    if args.trackers:  # trackers take scalars and strings only
        hparams = {k: v for config in (*configs, args) for k, v in vars(config).items()}
        accelerator.init_trackers(
            project, config={k: v for k, v in hparams.items() if isinstance(v, int | float | str | bool)}
        )
    return accelerator


METRIC_GREATER_IS_BETTER = {
    **dict.fromkeys(("accuracy", "f1", "precision", "recall", "pearson", "spearman", "average"), True),
    **dict.fromkeys(("micro_f1", "macro_f1", "strict_f1", "exact_match"), True),
    **dict.fromkeys(("loss", "mse"), False),
}
"""The direction of every metric nlptransfer reports; a multi-task run's `<task>_<metric>` takes its metric's."""


def greater_is_better(metric: str, stated: bool | None = None) -> bool:
    """Whether a higher `metric` is better: as stated (--greater_is_better), else from the table above."""
    if stated is not None:
        return stated
    for known, direction in sorted(METRIC_GREATER_IS_BETTER.items(), key=lambda item: -len(item[0])):
        if metric == known or metric.endswith(f"_{known}"):
            return direction
    raise ConfigError(
        f"--metric_for_best_model {metric!r} is not one of nlptransfer's metrics "
        f"({sorted(METRIC_GREATER_IS_BETTER)}); say which way is better with --greater_is_better true|false"
    )


# --optim: how AdamW runs its update (same maths): one fused kernel over every weight, or per-tensor foreach
OPTIMIZERS = {"adamw_torch_fused": {"fused": True}, "adamw_torch": {"foreach": True}}


def build_optimizer(
    model: torch.nn.Module,
    args,
    layerwise_lr_decay: float | None = None,
    own_lr: Sequence[tuple[Sequence[torch.nn.Parameter], float]] = (),
) -> torch.optim.Optimizer:
    """AdamW with one parameter group per layer group (`strategies.optimizer_groups`): biases and
    LayerNorm weights get no weight decay; `layerwise_lr_decay` lowers the LR layer by layer downward.
    `own_lr` pairs (parameters, lr) take those parameters out of their group into one of their own, with
    that LR and no weight decay (e.g. the learned loss weights of a multi-task model)."""
    groups = optimizer_groups(
        model, args.learning_rate, args.weight_decay, layerwise_lr_decay, getattr(args, "head_learning_rate", None)
    )
    own_lr = [(list(params), lr) for params, lr in own_lr]  # iterated twice: a generator would be spent
    moved = {id(p) for params, _ in own_lr for p in params}
    for group in groups:
        group["params"] = [p for p in group["params"] if id(p) not in moved]
    top = max(group["layer_group"] for group in groups)
    groups = [group for group in groups if group["params"]]
    groups += [
        {"params": list(params), "weight_decay": 0.0, "lr": lr, "layer_group": top} for params, lr in own_lr if params
    ]
    return torch.optim.AdamW(
        groups,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        **OPTIMIZERS[args.optim],
    )


def total_steps(batches_per_epoch: int, args) -> int:
    if args.max_steps:
        return args.max_steps
    return math.ceil(math.ceil(batches_per_epoch / args.gradient_accumulation_steps) * args.num_train_epochs)


def build_scheduler(optimizer: torch.optim.Optimizer, steps: int, args, num_processes: int):
    # a prepared scheduler steps `num_processes` times per update (`sharding.scheduler_steps_per_update`)
    return get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=math.ceil(steps * args.warmup_ratio) * num_processes,
        num_training_steps=steps * num_processes,
    )


def check_output_dir(output_dir: str, reuse: bool = False) -> None:
    """Refuse to write into a non-empty folder unless told to reuse it (overwrite, or resume a run in it)."""
    path = Path(output_dir)
    if path.is_file():
        raise OutputDirError(f"--output_dir {output_dir} is a file")
    if path.is_dir() and any(path.iterdir()) and not reuse:
        raise OutputDirError(
            f"--output_dir {output_dir} exists and is not empty; pass --overwrite_output_dir to write into it, "
            f"--resume_from_checkpoint latest to continue its run, or choose another folder"
        )


def find_checkpoint(output_dir: str, resume: str) -> Path:
    if resume != "latest":
        if not (Path(resume) / "train_state.json").exists() and not Path(resume).is_dir():
            raise CheckpointNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
        return Path(resume)
    found = sorted((Path(output_dir) / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    if not found:
        raise CheckpointNotFoundError(
            f"--resume_from_checkpoint latest: no checkpoints in {Path(output_dir) / 'checkpoints'}"
        )
    return found[-1]


class Trainer:
    """Runs the loop; `evaluate()` returns validation metrics (or {} when there is no validation data)."""

    def __init__(
        self,
        accelerator: Accelerator,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        train_loader: DataLoader,
        args: TrainArguments,
        evaluate: Callable[[], dict[str, float]] | None = None,
        metric_for_best_model: str | None = None,
        greater_is_better: bool = True,
        loss_terms: Sequence[LossTerm] = (),
        max_steps: int | None = None,
        callbacks: Sequence[Callable[[Trainer], None]] = (),
        task_loss: Callable[[object, dict], torch.Tensor] | None = None,
    ):
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.train_loader, self.args, self.evaluate_fn = train_loader, args, evaluate
        self.metric, self.greater_is_better = metric_for_best_model, greater_is_better
        self.loss_terms = list(loss_terms)
        self.task_loss = task_loss  # (outputs, batch) -> the loss in place of the model's own (class weights)
        self.callbacks = list(callbacks)  # called before every training batch (schedules: GRL strength, ...)
        self.max_steps = max_steps or total_steps(len(train_loader), args)
        self.output_dir = Path(args.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.best_dir = self.checkpoint_dir / "best_model"
        self.state = TrainState()
        accelerator.register_for_checkpointing(self.state)
        if not isinstance(scheduler, AcceleratedScheduler):
            # under DeepSpeed, `prepare` hands back a schedule prepared apart from the model as it was, and
            # `save_state` leaves it out: a resumed run restarted its warm-up and decay from step 0
            accelerator.register_for_checkpointing(scheduler)
        self.loss_total: torch.Tensor | None = None  # during `train`: state.train_loss_sum, kept on the device
        self.last_logged = (0.0, 0)  # (train_loss_sum, train_loss_count) at the previous loss log

    @property
    def unwrapped(self) -> torch.nn.Module:
        """The model without its DDP/DeepSpeed/FSDP wrapper (callbacks set schedules on it)."""
        return self.accelerator.unwrap_model(self.model)

    # ---- checkpoints -------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write to a hidden folder, then rename: a killed run never leaves a half checkpoint."""
        self.sync_loss()
        final = self.checkpoint_dir / f"step_{self.state.step}"
        tmp = self.checkpoint_dir / f".tmp-step_{self.state.step}"
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            (tmp / "train_state.json").write_text(json.dumps(self.state.state_dict(), indent=2))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            self._rotate_checkpoints()
        self.accelerator.wait_for_everyone()

    def _rotate_checkpoints(self) -> None:
        if not self.args.save_total_limit:
            return
        found = sorted(self.checkpoint_dir.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        for old in found[: -self.args.save_total_limit]:
            shutil.rmtree(old)

    def resume(self, checkpoint: str) -> None:
        path = find_checkpoint(str(self.output_dir), checkpoint)
        self.accelerator.load_state(str(path))
        self.accelerator.print(f"resumed from {path} at step {self.state.step} (epoch {self.state.epoch})")

    # ---- evaluation and selection ------------------------------------------------------
    def run_evaluation(self) -> dict[str, float]:
        if self.evaluate_fn is None:
            return {}
        metrics = self.evaluate_fn()
        if not metrics:
            return {}
        record = {"step": self.state.step, "epoch": self.state.epoch, **{f"eval_{k}": v for k, v in metrics.items()}}
        self.state.history.append(record)
        self.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=self.state.step)
        self.accelerator.print(
            f"step {self.state.step}: "
            + ", ".join(f"eval_{k}={v:.4f}" for k, v in metrics.items() if k in ("loss", self.metric))
        )
        if self.metric is not None:
            if self.metric not in metrics:
                raise KeyError(f"--metric_for_best_model {self.metric!r} is not among the metrics {sorted(metrics)}")
            value = metrics[self.metric]
            better = self.state.best_metric is None or (
                value > self.state.best_metric if self.greater_is_better else value < self.state.best_metric
            )
            if better:
                self.state.best_metric, self.state.best_step = value, self.state.step
                self.state.evals_without_improvement = 0
                self._save_best()
            else:
                self.state.evals_without_improvement += 1
        return metrics

    def _save_best(self) -> None:
        """The best weights so far, gathered through accelerate (every process calls this): under DeepSpeed the
        module's tensors are views into flat buffers (ZeRO-1/2) or empty partitions (ZeRO-3), so safetensors
        could not save them directly."""
        state = self.accelerator.get_state_dict(self.model)
        if self.accelerator.is_main_process:
            tmp = self.checkpoint_dir / ".tmp-best_model"
            tmp.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.items()}, str(tmp / BEST_WEIGHTS))
            shutil.rmtree(self.best_dir, ignore_errors=True)
            tmp.rename(self.best_dir)
        self.accelerator.wait_for_everyone()

    def load_best(self) -> bool:
        """Put the best validation weights back into the model; False if no selection happened.

        The main process reads the copy and sends it to the others (`sharding.load_weights`: under ZeRO-3 and
        FSDP without a full copy per process). Under DeepSpeed this sets the module's weights, which evaluation
        and saving read; the optimizer's own fp32 copy is not restored, so training does not go on from here."""
        if self.state.best_step is None:  # the same on every process (scores are gathered)
            return False
        # the main process's disk decides for all (it wrote the copy): machines need not share the output folder
        if not broadcast_object_list([(self.best_dir / BEST_WEIGHTS).exists()])[0]:
            return False
        load_weights(self.accelerator, self.model, str(self.best_dir / BEST_WEIGHTS))
        self.accelerator.print(
            f"loaded the best model (step {self.state.best_step}, eval_{self.metric}={self.state.best_metric:.4f})"
        )
        return True

    def paused(self, work: Callable[[], object]) -> None:
        """Run `work` (an evaluation, a checkpoint) and count its time apart from the training steps."""
        start = time.perf_counter()
        work()
        self.pause_seconds += time.perf_counter() - start

    def should_stop(self) -> bool:
        patience = self.args.early_stopping_patience
        return bool(patience) and self.state.evals_without_improvement >= patience

    # ---- the loop ----------------------------------------------------------------------
    def sync_loss(self) -> float:
        """Copy the on-device running loss total into `state` (one device->host sync) and return it."""
        if self.loss_total is not None:
            self.state.train_loss_sum = self.loss_total.item()
        return self.state.train_loss_sum

    def log_loss(self) -> None:
        """Log the mean loss of the micro-batches since the previous log (as transformers' Trainer does)."""
        state = self.state
        total, (logged_sum, logged_count) = self.sync_loss(), self.last_logged
        loss = (total - logged_sum) / max(state.train_loss_count - logged_count, 1)
        self.last_logged = (total, state.train_loss_count)
        logs = {"train/loss": loss, "train/learning_rate": max(self.scheduler.get_last_lr())}
        self.accelerator.log(logs, step=state.step)
        self.progress.set_postfix(loss=f"{loss:.4f}")

    def compute_loss(self, batch: dict) -> torch.Tensor:
        outputs = self.model(**batch)
        loss = outputs.loss if self.task_loss is None else self.task_loss(outputs, batch)
        for term in self.loss_terms:
            loss = loss + term(self.model, batch, outputs)
        return loss

    def train(self) -> dict[str, float]:
        args, accelerator, state = self.args, self.accelerator, self.state
        if args.resume_from_checkpoint:
            self.resume(args.resume_from_checkpoint)
        every = int(args.checkpointing_steps) if str(args.checkpointing_steps).isdigit() else None
        self.progress = progress = tqdm(
            total=self.max_steps,
            initial=state.step,
            disable=args.disable_tqdm or not accelerator.is_local_main_process,
            desc="train",
        )
        # the loss is summed on the device (float64, in the order a host sum would take): reading it back
        # every micro-batch would wait for the GPU each time; it is read at logs, checkpoints and the end
        device = torch.device("cpu") if accelerator.device.type == "mps" else accelerator.device  # MPS: no float64
        self.loss_total = torch.tensor(state.train_loss_sum, dtype=torch.float64, device=device)
        self.last_logged = (state.train_loss_sum, state.train_loss_count)
        start, examples, stop = time.perf_counter(), 0, state.step >= self.max_steps
        self.pause_seconds = 0.0  # evaluation and checkpoints inside the loop: not training steps
        self.model.train()
        while not stop:
            self.train_loader.set_epoch(state.epoch)
            loader = self.train_loader
            if state.batches_in_epoch:
                loader = accelerator.skip_first_batches(self.train_loader, state.batches_in_epoch)
            for batch in loader:
                batch.pop("feature_index", None)
                for callback in self.callbacks:
                    callback(self)
                with accelerator.accumulate(self.model):
                    loss = self.compute_loss(batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and args.max_grad_norm:
                        accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                state.batches_in_epoch += 1
                examples += batch["input_ids"].shape[0] * accelerator.num_processes
                self.loss_total += loss.detach().to(self.loss_total.device, torch.float64)
                state.train_loss_count += 1
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                progress.update(1)
                if state.step % args.logging_steps == 0:
                    self.log_loss()
                if args.eval_strategy == "steps" and state.step % args.eval_steps == 0:
                    self.paused(self.run_evaluation)
                    stop = self.should_stop()
                if every and state.step % every == 0:
                    self.paused(self.save_checkpoint)
                if stop or state.step >= self.max_steps:
                    stop = True
                    break
            else:
                state.epoch += 1
                state.batches_in_epoch = 0
                if args.eval_strategy == "epoch":
                    self.paused(self.run_evaluation)
                    stop = stop or self.should_stop()
                if args.checkpointing_steps == "epoch":
                    self.paused(self.save_checkpoint)
        progress.close()
        self.sync_loss()
        self.loss_total = None
        runtime = time.perf_counter() - start
        if self.should_stop():
            accelerator.print(f"early stopping: no improvement in {args.early_stopping_patience} evaluations")
        if args.eval_strategy != "no" and (not state.history or state.history[-1]["step"] != state.step):
            self.run_evaluation()  # the final model is always evaluated once, so selection sees it
        return {
            "train_runtime": runtime,
            "train_step_runtime": runtime - self.pause_seconds,  # without evaluations and checkpoints
            "train_samples_per_second": examples / runtime if runtime else 0.0,
            "train_steps_per_second": state.step / runtime if runtime else 0.0,
            "train_loss": state.train_loss_sum / max(state.train_loss_count, 1),
            "train_steps": state.step,
            **engine_of(accelerator),
            "train_mixed_precision": accelerator.mixed_precision,
            "epoch": state.epoch + state.batches_in_epoch / max(len(self.train_loader), 1)
            if has_length(self.train_loader)
            else state.epoch,
        }
