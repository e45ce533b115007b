"""`MultiTaskModel`: one pretrained encoder shared by several tasks, each with its own route to its head.

    model = MultiTaskModel.from_encoder("sentence-transformers/all-MiniLM-L6-v2", tasks=[
        TaskSpec(name="trec", kind="classification", labels=[...]),
        TaskSpec(name="conll2003", kind="ner", labels=[...]),
    ])
    out = model(input_ids=..., attention_mask=..., task_ids=..., labels={"trec": ..., "conll2003": ...})
    model.save_pretrained("runs/mtl"); MultiTaskModel.from_pretrained("runs/mtl")
    model.predict(["Who wrote Hamlet?"], tasks=["trec", "conll2003"])

A batch may mix tasks: the encoder runs once and each example goes to its task's route (`TaskRoute`): the
states its head reads (the shared last layer, a learned mix of all layers, or its own copy of the top layers)
and the head. Heads of tasks absent from a batch are tied into the loss with weight zero, so every trainable
parameter gets a (zero) gradient in every step and DDP needs no `find_unused_parameters`.
The folder format (file names, version, weights' keys of older versions) is `runs`'s.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from nlptransfer.encoders import encoder_layers
from nlptransfer.heads import PrivateLayers, ScalarMix, build_head
from nlptransfer.hub import push_run
from nlptransfer.losses import LOSS_WEIGHTINGS
from nlptransfer.resolve import load_error, resolve_model
from nlptransfer.runs import (
    multitask_folder,
    read_multitask_config,
    read_multitask_weights,
    write_multitask_folder,
    write_results,
)
from nlptransfer.tasks import TASK_KINDS, TaskSpec


@dataclass
class MultiTaskOutput(ModelOutput):
    """`loss`: the weighted total; `losses` and `logits`: per task name (only tasks in the batch)."""

    loss: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] | None = None
    logits: dict[str, torch.Tensor] | None = None


class TaskRoute(nn.Module):
    """One task's way through a `MultiTaskModel` after the shared encoder: where its head's states come from
    (the last layer; `mix`, a learned `ScalarMix` of all layers; or `private`, its own copy of the top
    layers) and the head."""

    def __init__(self, spec: TaskSpec, head: nn.Module, mix: ScalarMix | None = None, private=None):
        super().__init__()
        self.spec = spec
        self.head = head
        self.mix = mix
        self.private: PrivateLayers | None = private

    def states(self, encoded: torch.Tensor) -> torch.Tensor:
        """What the head reads, from `MultiTaskModel.encode`'s output."""
        if self.private is not None:
            return self.private()
        return self.mix(encoded) if self.mix is not None else _last_layer(encoded)

    def forward(self, encoded: torch.Tensor, attention_mask=None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The head's logits for `rows` of the batch `encoded` holds (all of it when None)."""
        states = self.states(encoded)
        return self.head(states if rows is None else states[rows], attention_mask)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return TASK_KINDS[self.spec.kind].loss(logits, labels, self.spec.class_weights)


class TaskRoutes(nn.ModuleDict):
    """The routes by task name, in task order. Their modules, and so `parameters()`, come part by part across the
    tasks: every head, then every layer mix, then every private copy (the order of the layout before routes):
    the optimizer's parameter groups, its saved state and the order the gradient norm sums in are those of
    that layout, so a seeded run gives its numbers."""

    def named_modules(self, memo: set | None = None, prefix: str = "", remove_duplicate: bool = True):
        memo = set() if memo is None else memo
        if self in memo:
            return
        shells = [(prefix, self), *((f"{prefix}.{name}" if prefix else name, route) for name, route in self.items())]
        for path, module in shells:  # the containers themselves hold no parameters
            if module not in memo:
                if remove_duplicate:
                    memo.add(module)
                yield path, module
        children = [(path, dict(route.named_children())) for path, route in shells[1:]]
        parts = dict.fromkeys(["head", "mix", "private", *(part for _, named in children for part in named)])
        for part in parts:  # any other part a route was given comes after those, never left out
            for path, named in children:
                if part in named:
                    yield from named[part].named_modules(memo, f"{path}.{part}", remove_duplicate)


def _as_spec(task: TaskSpec | dict) -> TaskSpec:
    spec = task if isinstance(task, TaskSpec) else TaskSpec(**task)
    if spec.kind not in TASK_KINDS:
        raise ValueError(f"task {spec.name!r}: kind {spec.kind!r} is not one of {sorted(TASK_KINDS)}")
    if getattr(TASK_KINDS[spec.kind], "has_label_set", True) and not spec.labels:
        raise ValueError(f"task {spec.name!r}: no label names; set TaskSpec.labels (encode_splits fills them)")
    return spec


def _checked(encoder, tasks, loss_weighting: str, layer_mix, private_layers) -> tuple[list[TaskSpec], dict]:
    """The task specs and the private layers per task (none left out), once every setting is valid."""
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
    count = len(encoder_layers(encoder)) if private_layers else 0
    for name in (name for name in names if name in private_layers):
        if not 0 < (n := private_layers[name]) < count:
            raise ValueError(f"task {name!r}: private_layers must be 1-{count - 1}, got {n}")
    return specs, {name: private_layers[name] for name in names if name in private_layers}


def _routes(encoder: nn.Module, specs, head_dropout, layer_mix, private_layers: dict[str, int]) -> TaskRoutes:
    """A fresh route per task. The encoder's pooler moves into each sequence head (initialised from it), so no
    encoder weight goes unused; every head is built first, in task order (a seeded run draws the same weights)."""
    config = encoder.config
    dropout = head_dropout if head_dropout is not None else getattr(config, "hidden_dropout_prob", 0.1)
    pooler = getattr(encoder, "pooler", None)
    if pooler is not None:
        encoder.pooler = None
    std = getattr(config, "initializer_range", 0.02)
    heads = [
        build_head(kind.head, config.hidden_size, kind.num_outputs(spec), dropout, pooler, std)
        for spec, kind in ((spec, TASK_KINDS[spec.kind]) for spec in specs)
    ]
    shared = encoder_layers(encoder) if private_layers else []
    # every copy before any hook: a copy would take the hooks of the layer it copies
    private = {name: PrivateLayers(copy.deepcopy(shared[-n:])) for name, n in private_layers.items()}
    for copies in private.values():
        copies.attach(shared[len(shared) - len(copies)])
    mixes = {name: ScalarMix(config.num_hidden_layers + 1) for name in layer_mix}  # embeddings + each layer
    return TaskRoutes(
        {
            spec.name: TaskRoute(spec, head, mixes.get(spec.name), private.get(spec.name))
            for spec, head in zip(specs, heads)
        }
    )


class MultiTaskModel(nn.Module):
    encoder_attribute = "encoder"  # where `encoders.encoder_module` finds the shared encoder

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
        specs, private_layers = _checked(encoder, tasks, loss_weighting, layer_mix, private_layers)
        self.encoder = encoder
        self.task_names = [spec.name for spec in specs]
        self.base_model = base_model or getattr(encoder.config, "_name_or_path", None)
        self.tokenizer = tokenizer
        self.adapter_config: PeftConfig | None = None
        self.adapter_per_task = False
        self._adapter_params: dict[str, list[nn.Parameter]] = {}
        self.routes = _routes(encoder, specs, head_dropout, set(layer_mix), private_layers)
        self.loss_weighting_name = loss_weighting
        self.task_weights = dict(task_weights or {})
        self.head_dropout = head_dropout
        factors = {spec.name: TASK_KINDS[spec.kind].uncertainty_factor for spec in specs}
        self.loss_weighting = LOSS_WEIGHTINGS[loss_weighting](self.task_names, self.task_weights, factors)

    # ---- each task's parts, by task name (views of `routes`) ---------------------------
    @property
    def tasks(self) -> dict[str, TaskSpec]:
        return {name: route.spec for name, route in self.routes.items()}

    @property
    def heads(self) -> nn.ModuleDict:
        return nn.ModuleDict({name: route.head for name, route in self.routes.items()})

    @property
    def layer_mix(self) -> nn.ModuleDict:
        """The `ScalarMix` of each task whose head reads a learned mix of all the encoder's layers."""
        return nn.ModuleDict({name: route.mix for name, route in self.routes.items() if route.mix is not None})

    @property
    def private(self) -> nn.ModuleDict:
        """The `PrivateLayers` of each task with its own copy of the encoder's top layers (`encoders.layer_groups`
        puts each copy with the layer it copies)."""
        return nn.ModuleDict({name: route.private for name, route in self.routes.items() if route.private is not None})

    @property
    def private_layers(self) -> dict[str, int]:
        """How many of the encoder's top layers each task with private layers has its own copy of."""
        return {name: len(copies) for name, copies in self.private.items()}

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
        if private := list(self.private_layers):
            raise ValueError(f"tasks {private} have private_layers; adapters do not combine with them")
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
        if task not in self.routes:
            raise KeyError(f"unknown task {task!r}; this model has {self.task_names}")
        return self.task_names.index(task)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """The last layer's states [batch, seq, hidden]; all layers' [layers, batch, seq, hidden] when a
        task mixes layers (`layer_mix`)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        if all(route.mix is None for route in self.routes.values()):
            return self.encoder(**inputs).last_hidden_state
        return torch.stack(self.encoder(**inputs, output_hidden_states=True).hidden_states)

    def task_states(self, task: str, encoded: torch.Tensor) -> torch.Tensor:
        """What `task`'s head reads after `encode`: its private layers' output, its layer mix, or the last layer."""
        return self.routes[task].states(encoded)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The parameters only `task` uses: its head, layer mix, private layers, own adapter."""
        return [*self.routes[task].parameters(), *self._adapter_params.get(task, [])]

    def _release(self) -> None:
        """No reference to this step's graph outlives it (private layers record what the encoder handed them)."""
        for route in self.routes.values():
            if route.private is not None:
                route.private.release()

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
        for index, (name, route) in enumerate(self.routes.items()):
            rows = (task_ids == index).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            mask = attention_mask[rows] if attention_mask is not None else None
            if shared is None:  # this task's own adapter over its rows
                self._activate(name)
                logits[name] = route(self.encode(*(t[rows] if t is not None else None for t in inputs)), mask)
            else:
                logits[name] = route(shared, mask, rows)
            if labels is not None and name in labels:
                losses[name] = route.loss(logits[name], labels[name])
        self._release()
        loss = self.combine_losses(losses, logits)
        if loss is not None and self.training and any(route.private is not None for route in self.routes.values()):
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
                if p.requires_grad and not hasattr(p, "ds_id")  # ZeRO-3 reduces only the weights a step used
            ]
            if idle:
                loss = loss + 0.0 * sum(p.sum() for p in idle)
        return loss

    # ---- save / load as one artifact (the folder's format: `runs`) ---------------------
    def config_dict(self) -> dict:
        """What `from_pretrained` builds the model from; `nlptransfer_multitask.json` adds the format version."""
        return {
            "base_model": self.base_model,
            "tasks": [dataclasses.asdict(spec) for spec in self.tasks.values()],
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
        state = state_dict if state_dict is not None else self.state_dict()
        if self.adapter_config is not None:  # the frozen encoder comes back from base_model
            trainable = {name for name, p in self.named_parameters() if p.requires_grad}
            state = {k: v for k, v in state.items() if k in trainable or k.startswith("loss_weighting.")}
        write_multitask_folder(save_directory, self.config_dict(), state, self.encoder.config, self.tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, revision: str | None = None, token: str | None = None) -> MultiTaskModel:
        """Reload a saved model (folder or Hub repo id) with every head, label names and adapter, in one call.
        A folder of an older format loads too (`runs.upgrade_multitask_state`)."""
        folder = multitask_folder(path, revision, token)
        config = read_multitask_config(folder)
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
            layer_mix=config["layer_mix"],
            private_layers=config["private_layers"],
        )
        if config["adapter"]:
            model.add_adapter(PeftConfig.from_peft_type(**config["adapter"]), config["adapter_per_task"])
        state = read_multitask_weights(folder, config["format_version"])
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
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            if results:
                write_results(tmp, results)
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
        specs = self.tasks
        pairs = {bool(specs[name].text_pair_column) for name in tasks}
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
                logits[name] = self.routes[name](hidden).float().cpu()
            self._release()
            for row in range(len(chunk)):
                results.append(
                    {
                        name: TASK_KINDS[specs[name].kind].decode(
                            logits[name][row], specs[name], encoding, row, first[row]
                        )
                        for name in tasks
                    }
                )
        self.train(was_training)
        return results


def _last_layer(encoded: torch.Tensor) -> torch.Tensor:
    """The last layer's states from `encode`'s output (the last of all layers' when a task mixes layers)."""
    return encoded if encoded.dim() == 3 else encoded[-1]
