"""Collectives for data-parallel training: one interface, two backends.

* ``nats`` (:mod:`.ring`): ring all-reduce over NATS subjects private to the job and attempt; no extra dependency.
* ``torch`` (:mod:`.torchdist`): ``torch.distributed`` with gloo (CPU) or NCCL (GPU), when torch is installed.

Every call is collective: all ranks of the group make the same calls in the same order. A peer that stops answering
makes the call raise :class:`CollectiveError` within the group's timeout, never hang.
"""

from __future__ import annotations

import numpy as np


class CollectiveError(RuntimeError):
    """A collective could not complete (a peer died, timed out, or aborted the group)."""


class BackendUnavailable(CollectiveError):
    """The backend the job asks for cannot run on this node (torch missing): its configuration, not a peer."""


class PortTaken(CollectiveError):
    """Rank 0 found the group's port held by another process: not the job's fault, and gone with another port."""


class Collective:
    """A group of ``world`` ranks; this process is ``rank``."""

    backend = "base"

    def __init__(self, rank: int, world: int) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.rank = rank
        self.world = world

    async def allreduce(self, array: np.ndarray) -> np.ndarray:
        """Elementwise sum over all ranks of a 1-D float array (float32 or float64); every rank gets the sum."""
        raise NotImplementedError

    async def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        """``root``'s array, on every rank (same shape and dtype on all ranks)."""
        raise NotImplementedError

    async def barrier(self) -> None:
        await self.allreduce(np.zeros(1, dtype=np.float32))

    async def abort(self, reason: str) -> None:
        """Tell the peers this rank gives up, so their pending calls fail now rather than at the timeout."""

    async def close(self) -> None:
        """Leave the group (after the last collective)."""
