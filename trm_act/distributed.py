"""torch.distributed under torchrun: start-up, rank facts, threads, and collectives the trainer needs.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` and the rendezvous
variables; :func:`setup` initialises the default process group only when they are present, so a plain
``python -m trm_act.train`` never touches torch.distributed. Backend: ``nccl`` with one GPU per rank
(``cuda:LOCAL_RANK``) when the run uses CUDA, ``gloo`` on CPU.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

# Default intra-op threads per process. Measured on a 2-core machine with the default model: on an idle
# machine 2 threads gave only 15% more samples/s than 1 (3,403 vs 2,958), while on a machine shared with
# another job torch's default (one thread per core) made the default run take 842 s against 63 s with
# one thread (OpenMP threads spin waiting for cores that are busy). One thread per process loses little
# when the machine is idle and avoids the collapse when it is not; more processes (torchrun) scale better.
DEFAULT_THREADS = 1


@dataclass(frozen=True)
class Context:
    """Where this process stands: global rank, world size, rank on its node and processes on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        """True when torch.distributed is initialised for this run (under torchrun)."""
        return dist.is_available() and dist.is_initialized()

    @property
    def is_zero(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables are set (``WORLD_SIZE`` and ``RANK``)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(
            f"environment variable {name}={value!r} must be an integer (torchrun sets it)."
        ) from None


def context_from_env() -> Context:
    """The rank facts torchrun put in the environment (a single process without them)."""
    if not launched_by_torchrun():
        return Context()
    world = _env_int("WORLD_SIZE", 1)
    return Context(
        rank=_env_int("RANK", 0),
        world_size=world,
        local_rank=_env_int("LOCAL_RANK", 0),
        local_world_size=_env_int("LOCAL_WORLD_SIZE", world),
    )


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Initialise the process group when launched by torchrun; returns the context and this rank's device.

    ``device`` is the configured device: a CUDA device becomes ``cuda:LOCAL_RANK`` (one GPU per rank,
    nccl); a CPU device uses gloo. Re-entrant: an initialised group is reused.
    """
    ctx = context_from_env()
    if not launched_by_torchrun():
        return ctx, device
    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={ctx.local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
                "pass --nproc_per_node at most the GPU count, or --device cpu."
            )
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ctx, device


def teardown() -> None:
    """Destroy the process group if one was initialised (end of a torchrun worker)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_threads(requested: int | None, local_world_size: int, cores: int | None = None) -> int:
    """Intra-op threads for one process: ``requested`` or DEFAULT_THREADS, and under torchrun at most
    ``max(1, cores // local_world_size)`` so that the ranks of one node do not oversubscribe its cores."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = DEFAULT_THREADS if requested is None else requested
    if local_world_size > 1:
        threads = min(threads, max(1, cores // local_world_size))
    return threads


def set_threads(threads: int) -> None:
    """``torch.set_num_threads`` and, if torch has not started its inter-op pool yet, the inter-op count."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set, or parallel work already ran in this process: keep torch's
        pass


def rank_seed(seed: int, rank: int, slots: int) -> int:
    """Env seed of ``rank``: the vector env seeds sub-env i with ``seed + i``, so rank r takes
    ``seed + r * slots``; the ranks together seed like one vector env of ``world_size * slots`` sub-envs
    (rank zero as a single-process run)."""
    return seed + rank * slots


class DDPModel(DistributedDataParallel):
    """DistributedDataParallel that also exposes the wrapped model's ``config`` and ``init_carry``,
    which :func:`trm_act.act.act_step` reads; its forward is DDP's (gradients all-reduced in backward)."""

    @property
    def config(self) -> Any:
        return self.module.config

    def init_carry(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.init_carry(*args, **kwargs)


def wrap(model: torch.nn.Module, device: torch.device) -> DDPModel:
    # Buffers (y_init, z_init) never change, so DDP need not broadcast them before every forward.
    device_ids = [device.index] if device.type == "cuda" else None
    return DDPModel(model, device_ids=device_ids, broadcast_buffers=False)


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest ``value`` over all ranks, on every rank (a MAX all-reduce of one int); ``value``
    itself without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def gather_to_zero(obj: Any, ctx: Context) -> list[Any] | None:
    """Every rank's ``obj`` as a list on rank zero (None elsewhere); ``[obj]`` without a process group.

    Tensors in ``obj`` should be on the CPU (they are pickled). With nccl the current CUDA device must
    be this rank's, which :func:`setup` sets.
    """
    if not ctx.distributed:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_zero else None
    dist.gather_object(obj, out, dst=0)
    return out


# Test hook: when set to a directory, each rank writes ``rank<R>.sha256``, the digest of its model weights
# at the end of training, so a test can check that DDP kept every rank's weights identical.
DIGEST_DIR_ENV = "TRM_ACT_WEIGHTS_DIGEST_DIR"


def write_weights_digest(model: torch.nn.Module, ctx: Context) -> None:
    """Write this rank's weight digest under ``$TRM_ACT_WEIGHTS_DIGEST_DIR`` (nothing when unset)."""
    folder = os.environ.get(DIGEST_DIR_ENV)
    if not folder:
        return
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = os.path.join(folder, f"rank{ctx.rank}.sha256")
    with open(path, "w") as file:
        file.write(digest.hexdigest() + "\n")


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()
