"""A study across processes: the ranks of a ``torchrun`` world, each holding its own model replica.

``torchrun --nproc-per-node N -m taskvec study local-global ...`` starts N processes; each reads its place in the
world from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). A process started without torchrun
is a world of one and runs exactly as before. Only small Python objects cross ranks (the config check, barriers),
so the process group is always gloo, on CPU and GPU nodes alike; a rank on a GPU node uses ``cuda:LOCAL_RANK``.

Example::

    with world() as w:
        w.agree({"config": cfg.saved()})     # every rank the same config, or RankError
        mine = w.share(tasks)                # this rank's tasks, dealt round robin
        mine = w.take(tasks, cost, run_dir / ".taken")   # or taken from a shared queue, costliest first
        ...
        w.barrier()
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from taskvec.errors import RankError, TaskvecError

T = TypeVar("T")
TIMEOUT = timedelta(seconds=float(os.environ.get("TASKVEC_DIST_TIMEOUT", 7 * 24 * 3600)))
"""How long a rank waits at a barrier for the others (set ``TASKVEC_DIST_TIMEOUT`` in seconds): ranks that finish
their tasks early wait there for the slowest one, which may take hours."""


@dataclass(frozen=True)
class World:
    """This process's place among the ranks: ``rank`` of ``size`` (``local_rank`` on its node)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "World":
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, items: list[T]) -> list[T]:
        """This rank's items: item ``i`` goes to rank ``i % size`` (the same on every re-run of the same world)."""
        return [x for i, x in enumerate(items) if i % self.size == self.rank]

    def take(self, items: list[T], cost: Sequence[float], where: str | os.PathLike) -> Iterator[T]:
        """This rank's items, taken one at a time by whichever rank is free, the costliest first: a work queue on
        the file system the ranks share (a rank takes item ``i`` by creating ``where/<launch>/<i>`` exclusively,
        ``<launch>`` fresh for every launch, so a resumed run takes anew what a killed one had taken), so the ranks
        finish together whatever the error of the estimated ``cost``. Which rank computes an item must not change
        its result. A world of one takes every item, in the items' order."""
        if len(cost) != len(items):
            raise ValueError(f"take: {len(cost)} costs for {len(items)} items")
        if not self.distributed:
            yield from items
            return
        launch = Path(where) / str(self.gather(f"{time.time_ns()}-{os.getpid()}")[0])
        launch.mkdir(parents=True, exist_ok=True)
        for i in sorted(range(len(items)), key=lambda i: (-cost[i], i)):
            try:
                os.close(os.open(launch / str(i), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue  # another rank took it
            yield items[i]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (a small picklable object), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def together(self, fn: Callable[[], T]) -> T:
        """``fn()`` on every rank; if it raised a :class:`TaskvecError` on any rank, raise its message on every rank
        (as :class:`RankError`), so that no rank goes on to wait for one that stopped. A world of one just runs
        ``fn``."""
        if not self.distributed:
            return fn()
        try:
            result, problem = fn(), None
        except TaskvecError as err:
            result, problem = None, str(err)
        for r, p in enumerate(self.gather(problem)):
            if p is not None:
                raise RankError(p if r == 0 else f"rank {r}: {p}", self.rank)
        return result

    def agree(self, what: dict) -> None:
        """Raise :class:`RankError` on every rank unless every rank passed an equal ``what``."""
        every = self.gather(what)
        for r, other in enumerate(every):
            if other != every[0]:
                keys = sorted(k for k in set(other) | set(every[0]) if other.get(k) != every[0].get(k))
                if keys == ["config"]:
                    a, b = every[0]["config"], other["config"]
                    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                raise RankError(f"the {self.size} torchrun ranks disagree on the config: rank {r} differs from "
                                f"rank 0 in {', '.join(keys)}; give every rank the same flags", self.rank)


@contextmanager
def world(backend: str = "gloo") -> Iterator[World]:
    """The torchrun world of this process, its process group started from the environment (and destroyed on
    leaving) when there is more than one rank and none is started yet.

    Args:
        backend: ``"gloo"`` (the study: only small objects cross ranks) or ``"nccl"`` (from-scratch training on
            GPUs: DDP all-reduces the gradients).
    """
    w = World.from_env()
    started = False
    if w.distributed:
        import torch
        import torch.distributed as dist

        if torch.cuda.is_available():
            torch.cuda.set_device(w.local_rank % torch.cuda.device_count())  # "cuda" is this rank's GPU
        if not dist.is_initialized():
            dist.init_process_group(backend, init_method="env://", timeout=TIMEOUT)
            started = True
    try:
        yield w
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
