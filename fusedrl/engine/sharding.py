"""Fully sharded data parallelism (``fsdp: true``, PyTorch FSDP2): each rank keeps 1/world of every
parameter, gradient and AdamW moment, and gathers a decoder layer's weights only while that layer runs.

The fused loss reads the lm_head weight outside the model's forward, where FSDP would not gather it.
So the models of a run sit under one root module, ``ShardedModels``, whose forward simply calls a
function: the trainer runs everything that touches the models (a loss, a rollout, an evaluation)
through ``ShardedModels(fn, *args)``. Each decoder layer is its own FSDP unit; the rest (embeddings,
final norm, lm_head, value heads) belongs to the root unit, which stays gathered from the first forward
of a step until its backward has reduced the gradients. Frozen models (the reference) live under the
same root; their layers are gathered for their forward and freed right after.

FSDP averages gradients over ranks; the trainer's losses are scaled for a sum (``GradientSync``), so
under FSDP each loss is multiplied by the world size (``loss_scale``).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from .distributed import Ranks
from .models import decoder_layers


class ShardedModels(nn.Module):
    """The FSDP root over a run's models: ``self(fn, *args)`` runs ``fn(*args)`` inside its forward."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, fn, *args):
        return fn(*args)


def shard(models: list[nn.Module], ranks: Ranks, compute_dtype: torch.dtype | None = None,
          from_rank0: bool = False) -> ShardedModels:
    """Shard ``models`` (equal on every rank, on the CPU or the device) over all ranks; return their root.

    Parameters become ``DTensor`` shards in place, so optimizers must be built after this call.
    ``from_rank0``: only rank 0's models hold weights, the others' are on the meta device; every rank then
    gets its shards of rank 0's values (one whole tensor at a time through the device).
    ``compute_dtype`` (bf16 under autocast): weights are gathered and used in it, and gradients are
    reduced in fp32 into shards of the parameters' own dtype (FSDP's mixed precision); None keeps the
    parameters' dtype throughout."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    layers = decoder_layers(models)
    if not layers:
        kinds = sorted({type(m).__name__ for m in models})
        raise ValueError(f"fsdp: found no decoder layers to shard in {kinds} (expected a Hugging Face model "
                         "whose _no_split_modules names its layer class)")
    mesh = init_device_mesh(ranks.device.type, (ranks.world_size,))
    reduce_dtype = torch.float32 if compute_dtype is not None else None
    layer_policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=reduce_dtype)
    # the root's inputs are the loss's (advantages, reference logps, teacher logprobs): never cast them
    root_policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=reduce_dtype, cast_forward_inputs=False)
    root = ShardedModels(models)
    source = {n: t.detach() for n, t in _named_tensors(root)} if from_rank0 and ranks.is_main else {}
    for layer in reversed(layers):  # inner modules before the ones holding them, as FSDP requires
        fully_shard(layer, mesh=mesh, mp_policy=layer_policy)
    fully_shard(root, mesh=mesh, reshard_after_forward=False, mp_policy=root_policy)
    if from_rank0:
        _fill_from_rank0(root, source, ranks)
    return root


def _named_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters and buffers (non-persistent ones too) by name, sorted."""
    return sorted([*module.named_parameters(), *module.named_buffers()], key=lambda item: item[0])


def _fill_from_rank0(root: ShardedModels, source: dict[str, torch.Tensor], ranks: Ranks) -> None:
    """Give the sharded ``root`` of every rank rank 0's values. ``source``: rank 0's tensors, taken before
    sharding (detached, they keep the whole values); the other ranks' meta tensors are first allocated."""
    import torch.distributed as dist

    if not ranks.is_main:
        root.to_empty(device=ranks.device)
    with torch.no_grad():
        for name, tensor in _named_tensors(root):
            if not isinstance(tensor, DTensor):  # a buffer: whole on every rank
                dist.broadcast(tensor, src=0)
                continue
            whole = (source[name].to(ranks.device) if ranks.is_main
                     else torch.empty(tensor.shape, dtype=tensor.dtype, device=ranks.device))
            dist.broadcast(whole, src=0)
            if not ranks.is_main:  # FSDP's shards: torch.chunk along dim 0, empty past the last chunk
                pieces = torch.chunk(whole, ranks.world_size)
                tensor.to_local().copy_(pieces[ranks.rank] if ranks.rank < len(pieces) else whole[:0])


@contextlib.contextmanager
def gathered(model: nn.Module):
    """Inside the block the sharded ``model`` (under a ``ShardedModels`` root whose forward is running)
    keeps every layer whole: one all-gather per layer up front instead of one per layer and forward.
    Sampling runs a forward per new token, so this is how it runs (as TRL's ``ds3_gather_for_generation``);
    it holds the model's whole weights on every device meanwhile."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.set_reshard_after_forward(True, recurse=False)
            unit.reshard()


def shard_sizes(module: nn.Module) -> tuple[int, int]:
    """Bytes of ``module``'s parameters this rank holds, and of the whole parameters."""
    local = whole = 0
    for p in module.parameters():
        shard_ = p.to_local() if isinstance(p, DTensor) else p
        local += shard_.numel() * shard_.element_size()
        whole += p.numel() * p.element_size()
    return local, whole


def loss_scale(sharded: bool, ranks: Ranks) -> float:
    """Factor on each loss so that the reduced gradient is the sum over ranks: FSDP averages (x world size)."""
    return float(ranks.world_size) if sharded else 1.0


def local_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This rank's shards of a state dict, as contiguous CPU tensors that share no memory (safetensors-ready)."""
    local = {k: v.to_local() if isinstance(v, DTensor) else v for k, v in state.items()}
    return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in local.items()}


def load_local_tensors(module: nn.Module, shards: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``shards`` (``local_tensors`` of the same module on the same rank) into ``module`` in place."""
    state = module.state_dict()
    if set(state) != set(shards):
        missing, unexpected = sorted(set(state) - set(shards)), sorted(set(shards) - set(state))
        raise ValueError(f"{source}: weights do not match the model (missing {missing}, unexpected {unexpected})")
    with torch.no_grad():
        for name, value in state.items():
            target = value.to_local() if isinstance(value, DTensor) else value
            if target.shape != shards[name].shape:
                raise ValueError(f"{source}: {name} has shape {tuple(shards[name].shape)} here, the model's shard "
                                 f"is {tuple(target.shape)} (was it written with another world size?)")
            target.copy_(shards[name])


def like_parameter(tensor: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``tensor`` (a local shard, or a whole tensor) placed like ``param``: a ``DTensor`` shard when the
    parameter is sharded and the shapes match, the plain tensor otherwise (AdamW's step count)."""
    if isinstance(param, DTensor) and tuple(tensor.shape) == tuple(param.to_local().shape):
        return DTensor.from_local(tensor.to(param.device), param.device_mesh, param.placements, run_check=False,
                                  shape=param.shape, stride=param.stride())
    return tensor


def gather_state(module: nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """``module``'s whole state dict gathered from every rank's shards (every rank must call it); CPU tensors
    on the ranks that ``keep`` them, an empty dict elsewhere."""
    state = {}
    for name, value in module.state_dict().items():
        whole = value.full_tensor() if isinstance(value, DTensor) else value
        if keep:
            state[name] = whole.detach().cpu()
    return state
