"""nlptransfer: adapt pretrained encoders to new NLP tasks."""

from nlptransfer.adapters import AdapterArguments, apply_adapter, encoder_adapter_config, head_modules, merge_adapter
from nlptransfer.batching import (
    EpochSampler,
    MultiTaskCollator,
    PaddingCollator,
    eval_dataloader,
    train_dataloader,
    with_task,
)
from nlptransfer.config import (
    DataArguments,
    ModelArguments,
    MultiTaskArguments,
    RunArguments,
    TaskArguments,
    TrainArguments,
    TransferArguments,
    parse_args,
    save_config,
)
from nlptransfer.data import carve_validation, encode_splits, load_splits
from nlptransfer.distill import DistillArguments, DistillationModel, kd_loss, load_teacher, student_from_teacher
from nlptransfer.errors import (
    CheckpointNotFoundError,
    ConfigError,
    DataError,
    NlptransferError,
    OutputDirError,
    PushError,
    RunFolderError,
    run_main,
)
from nlptransfer.evaluation import evaluate, evaluate_tasks, predict_logits, prefixed
from nlptransfer.export import export_onnx
from nlptransfer.fusion import FusionArguments, apply_fusion, fold_fusion
from nlptransfer.heads import HEADS
from nlptransfer.inference import Predictor, load_predictor
from nlptransfer.lifecycle import EvalSet, Fitted, finish_run, fit, multitask_eval_sets, task_eval_sets
from nlptransfer.losses import LOSS_WEIGHTINGS
from nlptransfer.metrics import classification_metrics, ner_metrics
from nlptransfer.modeling import count_parameters, load_adapter_model, load_model_for_task, load_tokenizer
from nlptransfer.multitask import MultiTaskModel, MultiTaskOutput
from nlptransfer.readers import Records, Stream, read_file, stream_file
from nlptransfer.resolve import register_installed_model, resolve_model
from nlptransfer.runs import run_kind, save_run
from nlptransfer.sharding import parameters_in_sync
from nlptransfer.tasks import TASK_KINDS, Encoded, TaskSpec
from nlptransfer.training import (
    Trainer,
    TrainState,
    build_optimizer,
    build_scheduler,
    check_output_dir,
    set_cpu_threads,
    start_run,
    total_steps,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterArguments",
    "CheckpointNotFoundError",
    "ConfigError",
    "DataArguments",
    "DataError",
    "DistillArguments",
    "DistillationModel",
    "Encoded",
    "EpochSampler",
    "EvalSet",
    "Fitted",
    "FusionArguments",
    "HEADS",
    "LOSS_WEIGHTINGS",
    "ModelArguments",
    "MultiTaskArguments",
    "MultiTaskCollator",
    "MultiTaskModel",
    "MultiTaskOutput",
    "NlptransferError",
    "OutputDirError",
    "PaddingCollator",
    "Predictor",
    "PushError",
    "Records",
    "RunArguments",
    "RunFolderError",
    "Stream",
    "TASK_KINDS",
    "TaskArguments",
    "TaskSpec",
    "TrainArguments",
    "TrainState",
    "Trainer",
    "TransferArguments",
    "apply_adapter",
    "apply_fusion",
    "build_optimizer",
    "build_scheduler",
    "carve_validation",
    "check_output_dir",
    "classification_metrics",
    "count_parameters",
    "encode_splits",
    "encoder_adapter_config",
    "eval_dataloader",
    "evaluate",
    "evaluate_tasks",
    "export_onnx",
    "finish_run",
    "fit",
    "fold_fusion",
    "head_modules",
    "kd_loss",
    "load_adapter_model",
    "load_model_for_task",
    "load_predictor",
    "load_splits",
    "load_teacher",
    "load_tokenizer",
    "merge_adapter",
    "multitask_eval_sets",
    "ner_metrics",
    "parameters_in_sync",
    "parse_args",
    "predict_logits",
    "prefixed",
    "read_file",
    "register_installed_model",
    "resolve_model",
    "run_kind",
    "run_main",
    "save_config",
    "save_run",
    "set_cpu_threads",
    "start_run",
    "stream_file",
    "student_from_teacher",
    "task_eval_sets",
    "total_steps",
    "train_dataloader",
    "with_task",
]
