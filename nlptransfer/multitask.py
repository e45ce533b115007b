"""`MultiTaskModel`: one pretrained encoder shared by several tasks, each with its own head.

    model = MultiTaskModel.from_encoder("sentence-transformers/all-MiniLM-L6-v2", tasks=[
        TaskSpec(name="trec", kind="classification", labels=[...]),
        TaskSpec(name="conll2003", kind="ner", labels=[...]),
    ])
    out = model(input_ids=..., attention_mask=..., task_ids=..., labels={"trec": ..., "conll2003": ...})
    model.save_pretrained("runs/mtl"); MultiTaskModel.from_pretrained("runs/mtl")
    model.predict(["Who wrote Hamlet?"], tasks=["trec", "conll2003"])

A batch may mix tasks: the encoder runs once and each example goes to its task's head. Heads of
tasks absent from a batch are tied into the loss with weight zero, so every trainable parameter
gets a (zero) gradient in every step and DDP needs no `find_unused_parameters`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from peft import PeftConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from nlptransfer.heads import ScalarMix, build_head
from nlptransfer.losses import LOSS_WEIGHTINGS
from nlptransfer.resolve import load_error, resolve_model
from nlptransfer.tasks import TASK_KINDS, TaskSpec

CONFIG_FILE = "nlptransfer_multitask.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


@dataclass
class MultiTaskOutput(ModelOutput):
    """`loss`: the weighted total; `losses` and `logits`: per task name (only tasks in the batch)."""

    loss: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] | None = None
    logits: dict[str, torch.Tensor] | None = None


def _as_spec(task: TaskSpec | dict) -> TaskSpec:
    spec = task if isinstance(task, TaskSpec) else TaskSpec(**task)
    if spec.kind not in TASK_KINDS:
        raise ValueError(f"task {spec.name!r}: kind {spec.kind!r} is not one of {sorted(TASK_KINDS)}")
    if getattr(TASK_KINDS[spec.kind], "has_label_set", True) and not spec.labels:
        raise ValueError(f"task {spec.name!r}: no label names; set TaskSpec.labels (encode_splits fills them)")
    return spec


class MultiTaskModel(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        tasks: Sequence[TaskSpec | dict],
        loss_weighting: str = "static",
        task_weights: dict[str, float] | None = None,
        head_dropout: float | None = None,
        base_model: str | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        layer_mix: Sequence[str] = (),
        private_layers: dict[str, int] | None = None,
    ):
        super().__init__()
        specs = [_as_spec(task) for task in tasks]
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"task names must be unique and at least one: {names}")
        if unknown := sorted(set(layer_mix) - set(names)):
            raise ValueError(f"layer_mix names {unknown}, which are not tasks of this model ({names})")
        private_layers = {name: n for name, n in (private_layers or {}).items() if n}
        if unknown := sorted(set(private_layers) - set(names)):
            raise ValueError(f"private_layers names {unknown}, which are not tasks of this model ({names})")
        if both := sorted(set(private_layers) & set(layer_mix)):
            raise ValueError(f"tasks {both}: a task takes either private_layers or layer_mix, not both")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting {loss_weighting!r} is not one of {sorted(LOSS_WEIGHTINGS)}")
        self.encoder = encoder
        self.tasks = {spec.name: spec for spec in specs}
        self.task_names = names
        self.base_model = base_model or getattr(encoder.config, "_name_or_path", None)
        self.tokenizer = tokenizer
        self.adapter_config: PeftConfig | None = None
        self.adapter_per_task = False
        self._adapter_params: dict[str, list[nn.Parameter]] = {}
        config = encoder.config
        dropout = head_dropout if head_dropout is not None else getattr(config, "hidden_dropout_prob", 0.1)
        # the pooler moves into each sequence head (initialised from it), so no encoder weight goes unused
        pooler = getattr(encoder, "pooler", None)
        if pooler is not None:
            encoder.pooler = None
        std = getattr(config, "initializer_range", 0.02)
        self.heads = nn.ModuleDict(
            {
                spec.name: build_head(
                    TASK_KINDS[spec.kind].head,
                    config.hidden_size,
                    TASK_KINDS[spec.kind].num_outputs(spec),
                    dropout,
                    pooler,
                    std,
                )
                for spec in specs
            }
        )
        # tasks whose head reads a learned mix of all the encoder's layers instead of the last one
        layers = config.num_hidden_layers + 1  # the embeddings' output and each layer's
        self.layer_mix = nn.ModuleDict({name: ScalarMix(layers) for name in names if name in set(layer_mix)})
        # tasks with their own copy of the encoder's top layers (branching off the shared ones below them)
        self.private = nn.ModuleDict()
        self._branch_inputs: dict[int, tuple] = {}  # shared layer index -> (hidden, args, kwargs) it was called with
        if private_layers:
            shared_layers = encoder_layers(encoder)
            for name in (name for name in names if name in private_layers):
                if not 0 < (n := private_layers[name]) < len(shared_layers):
                    raise ValueError(f"task {name!r}: private_layers must be 1-{len(shared_layers) - 1}, got {n}")
                self.private[name] = copy.deepcopy(shared_layers[-n:])
            for index in {len(shared_layers) - len(copies) for copies in self.private.values()}:
                shared_layers[index].register_forward_pre_hook(partial(self._record_branch, index), with_kwargs=True)
        self.loss_weighting_name = loss_weighting
        self.task_weights = dict(task_weights or {})
        self.head_dropout = head_dropout
        factors = {spec.name: TASK_KINDS[spec.kind].uncertainty_factor for spec in specs}
        self.loss_weighting = LOSS_WEIGHTINGS[loss_weighting](names, self.task_weights, factors)

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_encoder(
        cls,
        name_or_path: str,
        tasks: Sequence[TaskSpec | dict],
        revision: str = "main",
        trust_remote_code: bool = False,
        **kwargs,
    ) -> MultiTaskModel:
        """A pretrained encoder (Hub id, offline alias or folder) with a fresh head per task."""
        path = resolve_model(name_or_path)
        try:
            encoder = AutoModel.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
        except OSError as err:
            raise load_error(name_or_path, err) from err
        return cls(encoder, tasks, base_model=name_or_path, tokenizer=tokenizer, **kwargs)

    def add_adapter(self, peft_config: PeftConfig, per_task: bool = False) -> None:
        """Inject an adapter into the encoder: one shared by all tasks, or one per task (named after it).

        The encoder's own weights freeze; adapters and heads train. With `per_task`, each task's rows
        go through the encoder with that task's adapter (one encoder pass per task in a batch).
        """
        if self.private:
            raise ValueError(f"tasks {list(self.private)} have private_layers; adapters do not combine with them")
        peft_config.modules_to_save = None
        with warnings.catch_warnings():  # peft warns that a second adapter is "multiple adapters": intended
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            for name in self.task_names if per_task else ["default"]:
                inject_adapter_in_model(copy.deepcopy(peft_config), self.encoder, adapter_name=name)
        self.adapter_config, self.adapter_per_task = peft_config, per_task
        self._adapter_params = {name: [] for name in self.task_names}
        tuner_layers = [m for m in self.encoder.modules() if isinstance(m, BaseTunerLayer)] if per_task else []
        for module in tuner_layers:
            for layer_name in module.adapter_layer_names:
                for name, layer in getattr(module, layer_name).items():
                    params = [layer] if isinstance(layer, nn.Parameter) else list(layer.parameters())
                    self._adapter_params[name] += params
        for param in (p for params in self._adapter_params.values() for p in params):
            param.requires_grad_(True)

    def _activate(self, task: str) -> None:
        # not peft's set_adapter(): it flips requires_grad, which a DDP-wrapped model must never see
        for module in self.encoder.modules():
            if isinstance(module, BaseTunerLayer):
                module._active_adapter = [task]

    # ---- forward -----------------------------------------------------------------------
    def task_index(self, task: str) -> int:
        if task not in self.tasks:
            raise KeyError(f"unknown task {task!r}; this model has {self.task_names}")
        return self.task_names.index(task)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """The last layer's states [batch, seq, hidden]; all layers' [layers, batch, seq, hidden] when a
        task mixes layers (`layer_mix`)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        if not self.layer_mix:
            return self.encoder(**inputs).last_hidden_state
        return torch.stack(self.encoder(**inputs, output_hidden_states=True).hidden_states)

    @property
    def private_layers(self) -> dict[str, int]:
        """How many of the encoder's top layers each task with private layers has its own copy of."""
        return {name: len(copies) for name, copies in self.private.items()}

    def _record_branch(self, index: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        # what the encoder passed to shared layer `index` (its input states, attention mask, position bias...):
        # a task's private copies of the layers from there on take the same, whatever the architecture
        self._branch_inputs[index] = (args[0], args[1:], kwargs)

    def task_states(self, task: str, encoded: torch.Tensor) -> torch.Tensor:
        """What `task`'s head reads after `encode`: its private layers' output, its layer mix, or the last layer."""
        if task in self.private:
            private = self.private[task]
            hidden, args, kwargs = self._branch_inputs[self.encoder.config.num_hidden_layers - len(private)]
            for layer in private:
                hidden = layer(hidden, *args, **kwargs)
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            return hidden
        return self.layer_mix[task](encoded) if task in self.layer_mix else _last_layer(encoded)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The parameters only `task` uses: its head, layer mix, private layers, own adapter."""
        mix = self.layer_mix[task].parameters() if task in self.layer_mix else ()
        private = self.private[task].parameters() if task in self.private else ()
        return [*self.heads[task].parameters(), *mix, *private, *self._adapter_params.get(task, [])]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        labels: dict[str, torch.Tensor] | None = None,
        task: str | None = None,
    ) -> MultiTaskOutput:
        """Route each row to its task's head (`task_ids`, or one `task` name for the whole batch)."""
        if task_ids is None:
            if task is None:
                raise ValueError("pass task_ids (one task index per row) or task (a task name for the batch)")
            task_ids = torch.full((input_ids.shape[0],), self.task_index(task), device=input_ids.device)
        inputs = (input_ids, attention_mask, token_type_ids)
        shared = None if self.adapter_per_task else self.encode(*inputs)
        logits, losses = {}, {}
        for index, name in enumerate(self.task_names):
            rows = (task_ids == index).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            if shared is None:  # this task's own adapter over its rows
                self._activate(name)
                hidden = self.task_states(name, self.encode(*(t[rows] if t is not None else None for t in inputs)))
            else:
                hidden = self.task_states(name, shared)[rows]
            mask = attention_mask[rows] if attention_mask is not None else None
            logits[name] = self.heads[name](hidden, mask)
            if labels is not None and name in labels:
                losses[name] = TASK_KINDS[self.tasks[name].kind].loss(logits[name], labels[name])
        self._branch_inputs.clear()  # no reference to this step's graph outlives it
        loss = self.combine_losses(losses, logits)
        if loss is not None and self.training and self.private:
            # a batch of private-layer tasks only leaves the shared top layers' output unused: tied in with
            # weight zero, those layers get a (zero) gradient in every step too (DDP)
            loss = loss + 0.0 * _last_layer(shared).sum()
        return MultiTaskOutput(loss=loss, losses=losses, logits=logits)

    def combine_losses(self, losses: dict[str, torch.Tensor], present) -> torch.Tensor | None:
        """The weighted sum of per-task losses (`loss_weighting`), plus, in training, a zero-weighted term
        over the heads (layer mixes, adapters) of tasks not `present` in the batch, so that every trainable
        parameter gets a gradient in every step (DDP)."""
        if not losses:
            return None
        loss = self.loss_weighting(losses)
        if self.training:
            idle = [
                p
                for name in self.task_names
                if name not in present
                for p in self.task_parameters(name)
                if p.requires_grad
            ]
            if idle:
                loss = loss + 0.0 * sum(p.sum() for p in idle)
        return loss

    # ---- save / load as one artifact ---------------------------------------------------
    def config_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "base_model": self.base_model,
            "tasks": [dataclasses.asdict(self.tasks[name]) for name in self.task_names],
            "loss_weighting": self.loss_weighting_name,
            "task_weights": self.task_weights,
            "head_dropout": self.head_dropout,
            "layer_mix": list(self.layer_mix),
            "private_layers": self.private_layers,
            "adapter": self.adapter_config.to_dict() if self.adapter_config else None,
            "adapter_per_task": self.adapter_per_task,
        }

    def save_pretrained(self, save_directory: str | Path, state_dict: dict | None = None) -> None:
        """Weights (all, or only adapter + heads when an adapter is in), encoder config, tokenizer, task specs.

        `state_dict` lets a distributed run pass the gathered weights (`accelerator.get_state_dict`).
        """
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        state = state_dict if state_dict is not None else self.state_dict()
        if self.adapter_config is not None:  # the frozen encoder comes back from base_model
            trainable = {name for name, p in self.named_parameters() if p.requires_grad}
            state = {k: v for k, v in state.items() if k in trainable or k.startswith("loss_weighting.")}
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / WEIGHTS_FILE))
        self.encoder.config.save_pretrained(out)
        (out / CONFIG_FILE).write_text(json.dumps(self.config_dict(), indent=2, default=_jsonable))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out)

    @classmethod
    def from_pretrained(cls, path: str | Path, revision: str | None = None, token: str | None = None) -> MultiTaskModel:
        """Reload a saved model (folder or Hub repo id) with every head, label names and adapter, in one call."""
        folder = Path(path)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(path), revision=revision, token=token))
        if not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; not a MultiTaskModel folder")
        config = json.loads((folder / CONFIG_FILE).read_text())
        if config.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path}: saved with a newer nlptransfer (format {config['format_version']})")
        if config["adapter"]:  # frozen base weights from the base model, adapter and heads from the folder
            encoder = AutoModel.from_pretrained(resolve_model(config["base_model"]))
        else:
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(folder))
        model = cls(
            encoder,
            [TaskSpec(**task) for task in config["tasks"]],
            loss_weighting=config["loss_weighting"],
            task_weights=config["task_weights"],
            head_dropout=config["head_dropout"],
            base_model=config["base_model"],
            tokenizer=AutoTokenizer.from_pretrained(folder),
            layer_mix=config.get("layer_mix", []),  # older artifacts have neither
            private_layers=config.get("private_layers", {}),
        )
        if config["adapter"]:
            model.add_adapter(PeftConfig.from_peft_type(**config["adapter"]), config.get("adapter_per_task", False))
        state = load_file(str(folder / WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if config["adapter"]:  # only the frozen base may be missing
            trainable = {name for name, p in model.named_parameters() if p.requires_grad}
            missing = [key for key in missing if key in trainable]
        if missing or unexpected:
            raise ValueError(
                f"{path}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        model.eval()
        return model

    def push_to_hub(
        self, repo_id: str, private: bool = False, token: str | None = None, results: dict | None = None
    ) -> str:
        """Upload the whole model (one repo: encoder or adapter, heads, tokenizer, card); returns the commit URL."""
        import tempfile

        from nlptransfer.hub import push_run

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            if results:
                (Path(tmp) / "all_results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
            return push_run(tmp, repo_id, private=private, token=token)

    # ---- inference ---------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        texts: Sequence[str] | Sequence[tuple[str, str]],
        tasks: Sequence[str] | None = None,
        batch_size: int = 32,
        max_length: int = 128,
    ) -> list[dict]:
        """Label names (classification), a score (regression) or entity spans (NER) per text and task.

        One encoder pass per batch serves every requested task (one per task with per-task adapters).
        Sentence-pair tasks take (a, b) tuples.
        """
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass tokenizer= when building it")
        tasks = list(tasks or self.task_names)
        for name in tasks:
            self.task_index(name)
        pairs = {bool(self.tasks[name].text_pair_column) for name in tasks}
        if len(pairs) > 1:
            raise ValueError(f"tasks {tasks} mix sentence-pair and single-sentence inputs; predict them separately")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        results: list[dict] = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            first, second = ([a for a, _ in chunk], [b for _, b in chunk]) if pairs == {True} else (chunk, None)
            encoding = self.tokenizer(
                first, second, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
            inputs = {k: v.to(device) for k, v in encoding.items()}
            shared = None if self.adapter_per_task else self.encode(**inputs)
            logits = {}
            for name in tasks:  # per-task adapters need their own encoder pass
                if shared is None:
                    self._activate(name)
                hidden = shared if shared is not None else self.encode(**inputs)
                logits[name] = self.heads[name](self.task_states(name, hidden)).float().cpu()
            self._branch_inputs.clear()
            for row in range(len(chunk)):
                results.append(
                    {
                        name: TASK_KINDS[self.tasks[name].kind].decode(
                            logits[name][row], self.tasks[name], encoding, row, first[row]
                        )
                        for name in tasks
                    }
                )
        self.train(was_training)
        return results


def _last_layer(encoded: torch.Tensor) -> torch.Tensor:
    """The last layer's states from `encode`'s output (the last of all layers' when a task mixes layers)."""
    return encoded if encoded.dim() == 3 else encoded[-1]


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer layers (BERT's `encoder.layer`, DistilBERT's `transformer.layer`, ...)."""
    count = encoder.config.num_hidden_layers
    for name, module in encoder.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) == count
            and name.rsplit(".", 1)[-1] in ("layer", "layers")
        ):
            return module
    raise ValueError(f"found no list of {count} layers in {type(encoder).__name__}; private_layers needs one")


def _jsonable(value):
    """peft configs hold sets (target_modules) and enums: lists and strings in JSON."""
    return sorted(value) if isinstance(value, (set, frozenset)) else str(value)
