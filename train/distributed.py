"""Data-parallel training, sampling and evaluation under ``torchrun`` (one process per rank).

A :class:`DistContext` is the whole API the loops use; the single-process context :data:`SINGLE` makes
every collective the identity, so one code path serves both::

    torchrun --nproc-per-node 4 -m spkdiff train --stage all --out runs/x      # one host
    torchrun --nnodes 2 --node-rank R --nproc-per-node 8 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29400 --rdzv-id x -m spkdiff train ...      # several hosts

Training (:func:`spkdiff.train.loop.run_training`):

- the epoch's permutation comes from ``seed + epoch`` (as in one process); global batch ``j`` of size B is
  ``order[jB:(j+1)B]`` and rank r trains on its r-th slice of B/W items, so the global batch stays
  ``batch_size`` and DDP's gradient average over ranks equals the gradient of the global-batch mean loss;
- BatchNorm: per-rank statistics by default; ``--sync-bn`` swaps in :class:`SyncBatchNorm2d` (statistics
  over the global batch, exact gradients), which makes the forward equal the single-process one;
- stage-2 noise draws come from a generator seeded by (seed, step, rank): no per-rank RNG state to save;
- rank 0 alone loads checkpoints (and broadcasts them), writes checkpoints and logs, shows progress.

Sampling / evaluation: work is cut into fixed batches whose randomness depends only on (seed, batch index);
batch i runs on rank i mod W and the results are gathered in batch order (:meth:`DistContext.map_batches`),
so W ranks return exactly what one process returns.

Failure handling: the process group has a timeout (``--dist-timeout``); gloo fails a collective as soon as a
peer's connection drops, and a stalled peer fails it after the timeout; either becomes one-line
:class:`~spkdiff.errors.SpkdiffError` naming the rank (:func:`session`). torchrun itself stops a host's
remaining workers when one of them dies.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from spkdiff.errors import SpkdiffError
from spkdiff.generation import keyed_generator

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; ``world_size == 1`` is the plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"
    sync_bn: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size}"

    # --- collectives (identity when single) --------------------------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank (pickled)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give its result, or its SpkdiffError, to every rank."""
        if not self.enabled:
            return fn()
        result: Any = None
        error: str | None = None
        if self.is_main:
            try:
                result = fn()
            except SpkdiffError as err:
                error = str(err)
        result, error = self.broadcast((result, error))
        if error is not None:
            raise SpkdiffError(error)
        return result

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. a dataset download), then the other ranks."""
        if self.enabled and not self.is_main:
            self.barrier()
        yield
        if self.enabled and self.is_main:
            self.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar values over ranks (same keys on every rank)."""
        if not self.enabled or not values:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64)
        dist.all_reduce(t)
        return dict(zip(values, (t / self.world_size).tolist()))

    def check_same(self, what: str, value: Any) -> None:
        """Raise on every rank unless all ranks hold the same ``value`` (e.g. a data fingerprint)."""
        values = self.all_gather(value)
        if any(v != values[0] for v in values):
            bad = [r for r, v in enumerate(values) if v != values[0]]
            raise SpkdiffError(f"ranks disagree on {what} (rank 0 vs rank {bad[0]})")

    def map_batches(self, fn: Callable[[int], T], n_batches: int) -> list[T]:
        """``[fn(0), ..., fn(n_batches - 1)]`` on every rank; batch i is computed on rank i mod W."""
        if not self.enabled:
            return [fn(i) for i in range(n_batches)]
        mine = {i: fn(i) for i in range(self.rank, n_batches, self.world_size)}
        merged: dict[int, T] = {}
        for part in self.all_gather(mine):
            merged.update(part)
        return [merged[i] for i in range(n_batches)]

    # --- training --------------------------------------------------------------------------------------------
    def shard(self, global_batch: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch of indices (the batch size must divide by the world size)."""
        per = global_batch.shape[0] // self.world_size
        return global_batch[self.rank * per:(self.rank + 1) * per]

    def step_generator(self, gen: torch.Generator, seed: int, step: int) -> torch.Generator:
        """The training step's generator: the stage's own one in one process, keyed by (seed, step, rank) in W."""
        return keyed_generator(seed, step, self.rank) if self.enabled else gen

    def prepare(self, model: nn.Module) -> nn.Module:
        """Swap in SyncBatchNorm2d if asked (in place; same parameters) and wrap in DDP; identity when single."""
        if not self.enabled:
            return model
        if self.sync_bn:
            convert_sync_batchnorm(model)
        return _DDP(model)


SINGLE = DistContext()


class _DDP(nn.parallel.DistributedDataParallel):
    """DDP that forwards unknown attributes (``cfg``, ``k``, ...) to the wrapped model."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


def param_digest(model: nn.Module) -> str:
    """sha256 of all parameters' bytes (buffers excluded: per-rank BN running stats may differ)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().cpu().numpy().tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ SyncBatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: y = sum_r x_r; dL/dx_r = sum_r' dL_r'/dy."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        g = grad.contiguous().clone()
        dist.all_reduce(g)
        return g


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span all ranks (works on CPU/gloo, unlike torch's SyncBatchNorm).

    mu = sum_r sum x / n,  var = sum_r sum (x - mu)^2 / n  (n = elements per channel over all ranks);
    y = (x - mu) / sqrt(var + eps) * weight + bias; running_var takes the unbiased var * n / (n - 1).
    Outside training, or in one process, it is plain BatchNorm2d (same state_dict).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        dims = (0, 2, 3)
        count = torch.full((1,), float(x.numel() // c), dtype=x.dtype)
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = sums[c]
        mean = sums[:c] / n
        xc = x - mean.view(1, c, 1, 1)
        var = _AllReduceSum.apply((xc * xc).sum(dims)) / n
        y = xc * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)).detach(), alpha=m)
        return y


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every nn.BatchNorm2d child by a SyncBatchNorm2d sharing its parameters and buffers (in place)."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(model, name, new)
        else:
            convert_sync_batchnorm(child)
    return model


# ------------------------------------------------------------------------------------------------ process group


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as set by torchrun; (0, 1, 0) outside it."""
    try:
        return tuple(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    except ValueError as err:
        raise SpkdiffError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {err}") from None


def default_backend() -> str:
    """gloo for CPU tensors (our models train on CPU); NCCL for CUDA tensors where CUDA is present."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init(timeout_s: float = DEFAULT_TIMEOUT_S, sync_bn: bool = False) -> DistContext:
    """Join the process group torchrun describes (env://), or return the single-process context."""
    rank, world, local = world_from_env()
    if world <= 1:
        return SINGLE
    backend = default_backend()
    _share_cores(int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        except (dist.DistError, RuntimeError, ValueError) as err:
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise SpkdiffError(f"rank {rank} of {world}: cannot join the process group at {where}: "
                               f"{_first_line(err)}") from None
    return DistContext(rank, world, local, backend, sync_bn)


def _share_cores(local_world: int) -> None:
    """Each of a host's ranks gets its share of the cores: torch follows OMP_NUM_THREADS (torchrun sets 1 unless
    given), the numba LIF kernels get the same count (their default is every core, in every rank)."""
    import numba

    n = int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, (os.cpu_count() or 1) // max(1, local_world))
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


@contextmanager
def session(timeout_s: float = DEFAULT_TIMEOUT_S, sync_bn: bool = False) -> Iterator[DistContext]:
    """:func:`init`, then turn a failed collective (peer gone, timeout) into one SpkdiffError line.

    On success the group is destroyed; after a failure it is left alone (tearing down a broken group can
    block) and the process is about to exit anyway.
    """
    ctx = init(timeout_s, sync_bn)
    try:
        yield ctx
    except (dist.DistError, RuntimeError) as err:
        if not ctx.enabled or not _is_comm_error(err):
            raise
        raise SpkdiffError(f"{ctx.describe()}: lost contact with another rank (it died, or stalled for more "
                           f"than --dist-timeout {timeout_s:g} s): {_first_line(err)}") from None
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _is_comm_error(err: BaseException) -> bool:
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return any(s in text for s in ("gloo", "Connection reset", "Connection closed", "Timed out", "timed out",
                                   "NCCL", "Broken pipe", "ProcessGroup"))
