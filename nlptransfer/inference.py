"""Answer texts with any saved run: one `Predictor` for `predict`, the server and the exported models.

A `Predictor` is a tokenizer, a backend that turns one tokenized batch into every task's logits, and the
task specs that decode them (`TaskKind.decode`, the code `MultiTaskModel.predict` uses). The backend is the
only part that differs between PyTorch and an exported ONNX graph, so both answer in the same format:

    single-task run (model, or adapter merged into its base at load)  ->  one task, named after the run's kind
    multi-task run                                                      ->  every task, from one encoder pass

Backends are registered in `BACKENDS` by name: `torch` reads a run folder, `onnx` an export of one
(`nlptransfer.export`) through ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from nlptransfer.errors import ConfigError, RunFolderError
from nlptransfer.runs import MULTITASK_FILE, ONNX_FILE, read_json, read_task_info, run_kind
from nlptransfer.tasks import INFERENCE_SETTINGS, TASK_KINDS, TaskSpec, pool_chunks, tokenize_texts

Text = str | tuple[str, str]
"""A text, or a (first, second) pair for sentence-pair tasks."""
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""`TorchTaskModel`'s inputs, in its order; an export keeps those its tokenizer makes."""


class Backend(Protocol):
    """One tokenized batch in, each task's logits out ([batch, labels] or [batch, tokens, labels])."""

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Predictor:
    """A loaded run ready to answer batches of texts; thread-safe for one caller at a time."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        specs: Sequence[TaskSpec],
        backend: Backend,
        name: str = "model",
        kind: str = "model",
        max_length: int = 128,
        input_names: Sequence[str] | None = None,
    ):
        self.tokenizer = tokenizer
        self.specs = {spec.name: spec for spec in specs}
        self.backend = backend
        self.name = name
        self.kind = kind
        self.max_length = max_length
        self.input_names = list(input_names or tokenizer.model_input_names)
        chunked = [spec for spec in specs if spec.long_text == "chunk"]
        self.chunking: TaskSpec | None = chunked[0] if chunked else None
        """A task trained on chunks of long texts: texts are read in its windows, the windows' logits pooled."""
        if self.chunking and any(TASK_KINDS[spec.kind].head != "sequence" for spec in specs):
            raise ConfigError("a model whose tasks chunk long texts answers per text only: it cannot also tag words")

    @property
    def task_names(self) -> list[str]:
        return list(self.specs)

    @property
    def pair_input(self) -> bool:
        """Whether the tasks read sentence pairs (a model serves either pairs or single texts)."""
        return any(spec.text_pair_column for spec in self.specs.values())

    def tokenize(self, texts: Sequence[Text]):
        if self.pair_input:
            if not all(isinstance(t, (tuple, list)) and len(t) == 2 for t in texts):
                raise ValueError("this model reads sentence pairs: pass [first, second] for each input")
            first, second = [a for a, _ in texts], [b for _, b in texts]
        else:
            if not all(isinstance(t, str) for t in texts):
                raise ValueError("this model reads single texts: pass a string for each input")
            first, second = list(texts), None
        if self.chunking:
            encoding = tokenize_texts(
                self.tokenizer, first, second, self.max_length, self.chunking, padding=True, return_tensors="np"
            )
        else:
            encoding = self.tokenizer(
                first, second, truncation=True, max_length=self.max_length, padding=True, return_tensors="np"
            )
        return first, encoding

    def logits(self, texts: Sequence[Text]) -> tuple[list[str], object, dict[str, np.ndarray]]:
        """(first texts, the encoding, every task's logits as float32 numpy, one row per text) for one batch;
        a chunking task's windows are pooled into their text's row."""
        first, encoding = self.tokenize(texts)
        inputs = {name: encoding[name].astype(np.int64) for name in self.input_names if name in encoding}
        logits = self.backend(inputs)
        if self.chunking:
            rows = encoding["overflow_to_sample_mapping"].tolist()
            pooling = self.chunking.chunk_pooling
            logits = {name: np.stack(pool_chunks(list(out), rows, pooling)) for name, out in logits.items()}
        return first, encoding, logits

    def predict(self, texts: Sequence[Text], tasks: Sequence[str] | None = None) -> list[dict]:
        """Each text's prediction per task: {"label", "score"} (classification), a number (regression),
        entity spans (NER). Unknown task names raise KeyError."""
        tasks = list(tasks or self.task_names)
        for name in tasks:
            if name not in self.specs:
                raise KeyError(f"unknown task {name!r}; this model has {self.task_names}")
        if not texts:
            return []
        first, encoding, logits = self.logits(texts)
        return [
            {
                name: TASK_KINDS[self.specs[name].kind].decode(
                    torch.from_numpy(logits[name][row]).float(), self.specs[name], encoding, row, first[row]
                )
                for name in tasks
            }
            for row in range(len(first))
        ]

    def label_scores(self, texts: Sequence[Text], task: str | None = None) -> list[list[dict]]:
        """Every label's probability per text, highest first (text-embeddings-inference's `/predict` format)
        for a classification task."""
        task = task or self.task_names[0]
        spec = self.specs[task]
        if not TASK_KINDS[spec.kind].has_label_set or TASK_KINDS[spec.kind].head != "sequence":
            raise ValueError(f"task {task!r} ({spec.kind}) has no label scores per text")
        _, _, logits = self.logits(texts)
        probs = TASK_KINDS[spec.kind].probabilities(torch.from_numpy(logits[task]))
        return [
            sorted(
                ({"label": label, "score": float(p)} for label, p in zip(spec.labels, row)),
                key=lambda item: -item["score"],
            )
            for row in probs
        ]


# ---- the PyTorch backend --------------------------------------------------------------------------------
class TorchTaskModel(torch.nn.Module):
    """Any run's model as one module: token ids in, a tuple of each task's logits out (task order of
    `names`). The same module is what `export` traces, so PyTorch and ONNX answer from one definition."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str], multitask: bool):
        super().__init__()
        self.model = model
        self.names = list(names)
        self.multitask = multitask

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> tuple[torch.Tensor, ...]:
        if not self.multitask:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                inputs["token_type_ids"] = token_type_ids
            return (self.model(**inputs).logits,)
        model = self.model
        shared = None if model.adapter_per_task else model.encode(input_ids, attention_mask, token_type_ids)
        outputs = []
        for name in self.names:
            if shared is None:  # per-task adapters: this task's own encoder pass
                model._activate(name)
            hidden = shared if shared is not None else model.encode(input_ids, attention_mask, token_type_ids)
            outputs.append(model.routes[name](hidden, attention_mask))
        model._release()
        return tuple(outputs)


def load_task_model(run: str | Path) -> tuple[TorchTaskModel, list[TaskSpec], PreTrainedTokenizerBase, str]:
    """(the run's model as a `TorchTaskModel` in eval mode, its task specs, its tokenizer, its run kind).
    An adapter run is merged into its base model at load (one plain model; no adapter layers at inference)."""
    from nlptransfer.modeling import load_adapter_model
    from nlptransfer.multitask import MultiTaskModel
    from nlptransfer.resolve import load_error, resolve_model

    run = str(run)
    kind = run_kind(run)
    if kind == "onnx":
        raise RunFolderError(f"{run}: an ONNX export, not a run folder; load it with the onnx backend (--backend onnx)")
    if kind == "multitask":
        multi = MultiTaskModel.from_pretrained(run).eval()
        specs = list(multi.tasks.values())
        if multi.adapter_config is not None and not multi.adapter_per_task:
            multi.encoder = multi.encoder.merge_and_unload()  # one shared adapter: fold it in
            multi.adapter_config = None
        return TorchTaskModel(multi, [s.name for s in specs], multitask=True).eval(), specs, multi.tokenizer, kind
    if Path(run).is_dir() and kind not in ("model", "adapter"):
        raise RunFolderError(f"{run}: not a run folder (no config.json, adapter_config.json or {MULTITASK_FILE})")
    info = read_task_info(run) if Path(run).is_dir() else {}
    if kind == "adapter":
        model = load_adapter_model(run).merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(run)
        task_type = info["task_type"]
    else:
        path = resolve_model(run)
        try:
            config = AutoConfig.from_pretrained(path)
        except OSError as err:
            raise load_error(run, err) from err
        tagger = any(name.endswith("ForTokenClassification") for name in config.architectures or [])
        multilabel = config.problem_type == "multi_label_classification"
        task_type = info.get("task_type") or ("ner" if tagger else "multilabel" if multilabel else "classification")
        model = TASK_KINDS[task_type].auto_model.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    config = model.config
    labels = info.get("labels") or [config.id2label[i] for i in range(config.num_labels)]
    pair = task_type == "pair_classification"
    settings = {name: info[name] for name in INFERENCE_SETTINGS if name in info}
    spec = TaskSpec(
        name=task_type, kind=task_type, labels=list(labels), text_pair_column="text_pair" if pair else None, **settings
    )
    return TorchTaskModel(model.eval(), [spec.name], multitask=False).eval(), [spec], tokenizer, kind or "model"


def torch_backend(
    run: str | Path, device: str = "cpu", dtype: torch.dtype | None = None
) -> tuple[Backend, list[TaskSpec], PreTrainedTokenizerBase, str]:
    """`dtype` (e.g. torch.bfloat16, for `serve --precision`) casts the weights once at load; logits come back
    as float32 whatever it is."""
    module, specs, tokenizer, kind = load_task_model(run)
    module = module.to(device, dtype=dtype)

    @torch.inference_mode()
    def forward(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {name: torch.from_numpy(array).to(device) for name, array in inputs.items()}
        outputs = module(**tensors)
        return {name: out.float().cpu().numpy() for name, out in zip(module.names, outputs)}

    return forward, specs, tokenizer, kind


# ---- the ONNX Runtime backend (an export of `nlptransfer.export`) -----------------------------------------
ONNX_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
"""--device -> the ONNX Runtime execution provider that runs the graph."""


def onnx_session(path: str | Path, device: str = "cpu", threads: int | None = None):
    """An ONNX Runtime session for one graph: all graph optimisations, one operator at a time on `threads`
    threads (default: as many as PyTorch uses, so both backends get the same cores)."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ConfigError("the onnx backend needs onnxruntime: pip install 'nlptransfer[export]'") from err
    if device not in ONNX_PROVIDERS:
        raise ConfigError(f"--device {device!r}: the onnx backend runs on {', '.join(ONNX_PROVIDERS)}")
    if ONNX_PROVIDERS[device] not in onnxruntime.get_available_providers():
        raise ConfigError(f"--device {device}: this onnxruntime has no {ONNX_PROVIDERS[device]}")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL  # an encoder is one chain of operators
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=[ONNX_PROVIDERS[device]])


def onnx_backend(
    export: str | Path, device: str = "cpu"
) -> tuple[Backend, list[TaskSpec], PreTrainedTokenizerBase, str]:
    """An export folder's default graph (its quantized one when it has one), or one `.onnx` file of it."""
    folder = Path(export)
    graph = folder if folder.suffix == ".onnx" and folder.is_file() else None
    folder = folder.parent if graph else folder
    manifest = read_json(folder / ONNX_FILE)
    if manifest is None:
        if kind := run_kind(folder):
            raise RunFolderError(
                f"{export}: a {kind} run folder, not an ONNX export; export it first: nlptransfer export onnx {export} OUT"
            )
        raise RunFolderError(f"{export}: no {ONNX_FILE}; not an ONNX export (nlptransfer export onnx RUN OUT)")
    session = onnx_session(graph or folder / manifest["default_file"], device)
    specs = [TaskSpec(**task) for task in manifest["tasks"]]
    names, fed = manifest["outputs"], [node.name for node in session.get_inputs()]

    def forward(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, {name: inputs[name] for name in fed})))

    return forward, specs, AutoTokenizer.from_pretrained(folder), manifest["run_kind"]


BACKENDS: dict[str, Callable[..., tuple[Backend, list[TaskSpec], PreTrainedTokenizerBase, str]]] = {
    "torch": torch_backend,
    "onnx": onnx_backend,
}
"""name -> loader(run, device) returning (backend, task specs, tokenizer, run kind)."""


def load_predictor(
    run: str | Path, backend: str = "torch", device: str = "cpu", max_length: int | None = None, **options
) -> Predictor:
    """A `Predictor` for a run folder (or Hub id) on the named backend; for `onnx`, an export folder (or one
    `.onnx` file in it). `max_length`: tokens per text (per window for a task that chunks long texts); None
    takes the window the run was trained with (128 if it does not say). `options` go to the backend's loader
    (the torch backend's `dtype`)."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r} is not known; choose one of {', '.join(BACKENDS)}")
    forward, specs, tokenizer, kind = BACKENDS[backend](run, device, **options)
    if max_length is None:
        max_length = max((spec.max_seq_length or 0 for spec in specs), default=0) or 128
    return Predictor(tokenizer, specs, forward, name=Path(str(run)).name, kind=kind, max_length=max_length)
