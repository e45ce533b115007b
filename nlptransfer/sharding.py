"""What changes when an engine shards the model (DeepSpeed ZeRO, FSDP), in one place.

Under ZeRO-1/2 a module's weights are views into DeepSpeed's flat buffers; under ZeRO-3 every process holds
an empty partition of each weight (`ds_numel` is its real size) until it is gathered; under FSDP2 weights are
DTensor shards. Saving gathers through accelerate (`runs.save_model`); the functions here count, read, load
and compare weights so that they are right under every engine, and start the engines on CPU processes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, parse_flag_from_env
from safetensors import safe_open

from nlptransfer.errors import ConfigError

SHARDED_ENGINES = {"DEEPSPEED": DistributedType.DEEPSPEED, "FSDP": DistributedType.FSDP}
"""`accelerate launch` announces an engine with ACCELERATE_USE_<NAME>=true."""


def requested_engine() -> str | None:
    """The sharded engine `accelerate launch` asked for (its environment), if any."""
    return next((name for name in SHARDED_ENGINES if parse_flag_from_env(f"ACCELERATE_USE_{name}")), None)


def sharded_on_cpu() -> list:
    """The accelerator's kwargs handlers a sharded engine needs on CPU processes (gloo), where accelerate alone
    gets it wrong.

    Under `accelerate launch --use_deepspeed` without a GPU, accelerate finds no backend for the device, starts
    DeepSpeed's process group anyway and then reports every rank as process 0 of 1 (each one "main", each one
    saving). Naming gloo as the backend gives the real ranks; DS_ACCELERATOR=cpu makes DeepSpeed's own ops use
    the CPU. (`--cpu`/ACCELERATE_USE_CPU=1 is no way out: with it accelerate drops the engine for plain DDP.)
    """
    if requested_engine() is None or torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU"):
        return []
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return [InitProcessGroupKwargs(backend="gloo")]


def check_engine(accelerator: Accelerator) -> None:
    """Refuse a run whose engine is not the one launched: training would go on without it, silently.

    Measured with accelerate 1.15: FSDP on CPU processes comes out as distributed type NO (gloo, two ranks, no
    gradient sync: each rank trains its own model) or, with ACCELERATE_USE_CPU=1, as plain DDP."""
    wanted = requested_engine()
    if wanted and accelerator.distributed_type != SHARDED_ENGINES[wanted]:
        if parse_flag_from_env("ACCELERATE_USE_CPU"):
            why = "use_cpu / ACCELERATE_USE_CPU=1 makes accelerate drop it for plain DDP: remove it"
        else:
            why = f"accelerate applies {wanted} only on accelerators"
            why += "; on CPU processes use recipes/configs/accelerate/deepspeed_zero3.yaml" if wanted == "FSDP" else ""
        raise ConfigError(
            f"accelerate was launched for {wanted} but the processes run as {accelerator.distributed_type.value} "
            f"on {accelerator.device.type}: {why}"
        )
    if accelerator.num_processes > 1 and accelerator.distributed_type == DistributedType.NO:
        raise ConfigError(
            f"{accelerator.num_processes} processes without a distributed engine: gradients would not sync"
        )


def zero_stage(accelerator: Accelerator) -> int | None:
    plugin = accelerator.state.deepspeed_plugin
    return plugin.zero_stage if plugin is not None else None


def engine_of(accelerator: Accelerator) -> dict:
    """The engine a run really had, for its results: distributed type, ZeRO stage (DeepSpeed), world size."""
    return {
        "train_distributed_type": str(accelerator.distributed_type.value),
        "train_zero_stage": zero_stage(accelerator),
        "train_num_processes": accelerator.num_processes,
    }


def scheduler_steps_per_update(accelerator: Accelerator) -> int:
    """How often one optimizer update steps a prepared LR scheduler: accelerate steps it once per process (so a
    schedule is built that many times longer); under DeepSpeed the engine steps it once."""
    return 1 if accelerator.distributed_type == DistributedType.DEEPSPEED else accelerator.num_processes


def numel(param: torch.Tensor) -> int:
    """A parameter's size, also for a ZeRO-3 partition (whose local tensor is empty)."""
    return getattr(param, "ds_numel", param.numel())


@contextlib.contextmanager
def gathered(
    accelerator: Accelerator, params: Iterable[torch.nn.Parameter], modifier_rank: int | None = None
) -> Iterator[None]:
    """Inside, `params` hold their whole values on every process (ZeRO-3 gathers them; other engines already
    do, except FSDP, whose state is read through `get_state_dict`). With `modifier_rank`, what that process
    writes into them is what every process has afterwards."""
    if zero_stage(accelerator) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank):
            yield
    else:
        yield


@contextlib.contextmanager
def unsharded_loading(accelerator: Accelerator) -> Iterator[None]:
    """Inside, `from_pretrained` builds a whole model in this process alone. Under ZeRO-3 accelerate makes
    transformers partition every model it loads across the processes (`deepspeed.zero.Init`, whatever
    `zero3_init_flag` says), which needs them all: a model only the main process loads (to merge, to score)
    must not be. (accelerate's `zero3_init_context_manager(enable=False)` does nothing when the flag is off.)"""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        yield
        return
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def settled(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a prepared model, with no ZeRO-3 weight left gathered or in flight from the last
    forward pass (DeepSpeed refuses to gather those again)."""
    if zero_stage(accelerator) == 3 and hasattr(model, "empty_partition_cache"):
        model.empty_partition_cache()
    return accelerator.unwrap_model(model)


def load_weights(accelerator: Accelerator, model: torch.nn.Module, path: str) -> None:
    """Load a full safetensors state dict (saved from `get_state_dict`) into a prepared model's module, read by
    the main process only and sent to the others, so no process needs the file or a second full copy:
    ZeRO-3 gathers, sets and re-partitions one weight at a time; FSDP loads through torch's
    `set_model_state_dict(broadcast_from_rank0=True)`; DDP and ZeRO-1/2 broadcast tensor by tensor. `model`
    is the prepared model."""
    main, module = accelerator.is_main_process, settled(accelerator, model)
    if accelerator.distributed_type == DistributedType.FSDP:
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        state = load_file(path) if main else {}
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
        set_model_state_dict(module, state, options=options)
        return
    expected = set(module.state_dict())
    with safe_open(path, "pt") if main else contextlib.nullcontext() as weights:
        if main:
            found = set(weights.keys())
            if expected != found:
                raise RuntimeError(
                    f"{path}: weights do not match the model (missing {sorted(expected - found)[:5]}, unexpected {sorted(found - expected)[:5]})"
                )
        named = [*module.named_parameters(), *((n, b) for n, b in module.named_buffers() if n in expected)]
        zero3 = zero_stage(accelerator) == 3
        for name, tensor in named:
            partitioned = zero3 and isinstance(tensor, torch.nn.Parameter)  # re-partitioned from process 0 on exit
            with gathered(accelerator, [tensor] if partitioned else [], modifier_rank=0):
                if main:
                    tensor.data.copy_(weights.get_tensor(name))
            if accelerator.num_processes > 1 and not partitioned:
                torch.distributed.broadcast(tensor.data, src=0)


def parameters_in_sync(accelerator: Accelerator, model: torch.nn.Module) -> bool:
    """True when every process's per-tensor sums and sums of squares of the whole weights (in float64; a ZeRO-3
    weight gathered first) equal those of process 0: a fingerprint of the weights, not a bit-for-bit
    comparison. (Not for FSDP, whose processes hold different shards by design.)"""
    sums = []
    for param in settled(accelerator, model).parameters():
        with gathered(accelerator, [param]):
            whole = param.detach().double()
            sums.append(torch.stack([whole.sum(), whole.square().sum()]))
    fingerprint = torch.stack(sums).flatten()
    gathered_prints = accelerator.gather(fingerprint.to(accelerator.device)[None])
    return bool((gathered_prints == gathered_prints[0]).all())
