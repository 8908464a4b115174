"""The ``torch`` collective backend: ``torch.distributed`` with gloo on CPU, NCCL on CUDA.

torch is imported inside the functions, never at module import, so ``aios.trainer.collective`` stays importable (and
the ``nats`` backend usable) on machines without torch. torch.distributed calls block the calling thread, so each one
runs in a worker thread (:func:`asyncio.to_thread`) and the event loop keeps serving heartbeats meanwhile.

torch keeps one default process group per process, so a process holds at most one open :class:`TorchCollective`.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
from typing import Any, Callable, TypeVar

import numpy as np

from aios.trainer.collective import BackendUnavailable, Collective, CollectiveError, PortTaken

T = TypeVar("T")

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_ABORT_KEY = "aios/abort/{rank}"
# What torch raises when a peer dies, the store is unreachable or a call outlives the group timeout: DistError and its
# subclasses (DistBackendError, DistNetworkError, DistStoreError) are RuntimeErrors; some timeouts surface as
# TimeoutError and some socket failures as OSError.
_TORCH_FAILURES = (RuntimeError, TimeoutError, OSError)


def _torch() -> tuple[Any, Any]:
    """``(torch, torch.distributed)``, or a CollectiveError that says how to get them."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError as exc:
        raise BackendUnavailable("the torch backend needs torch on every node: pip install 'aios[torch]'") from exc
    if not dist.is_available():
        raise BackendUnavailable("this torch build has no torch.distributed support")
    return torch, dist


class TorchCollective(Collective):
    """A ``torch.distributed`` process group of ``world`` ranks; build it with :meth:`create`."""

    backend = "torch"

    def __init__(self, rank: int, world: int, device: str = "cpu", store: Any = None) -> None:
        """Wrap an already initialised default process group (``create`` does the initialising); ``store`` is the
        group's rendezvous key-value store, kept to pass abort reasons between ranks (optional)."""
        super().__init__(rank, world)
        self.device = device
        self._store = store
        # Calls from several tasks must reach torch in the order they were made, or the ranks' call sequences could
        # interleave differently and pair the wrong tensors; a lock serialises them in arrival order.
        self._lock = asyncio.Lock()
        self._broken: str | None = None
        self._closed = False

    @classmethod
    async def create(
        cls,
        rank: int,
        world: int,
        master_addr: str,
        master_port: int,
        timeout_s: float = 30.0,
        device: str = "cpu",
        group: str = "aios",
    ) -> "TorchCollective":
        """Join the group through rank 0's TCP store at ``master_addr:master_port``; returns once all ranks joined.

        ``timeout_s`` bounds the rendezvous and every later collective, so a dead peer becomes a CollectiveError
        instead of a hang. ``device`` ``"cpu"`` uses gloo; ``"cuda"`` (or ``"cuda:N"``) uses NCCL. ``group``
        prefixes every key the ranks write to the store (the job and its attempt): ranks of another job that found
        the same port, rank 0 of theirs having lost it, write beside this group's keys, not into its rendezvous.
        """
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        torch, dist = await asyncio.to_thread(_torch)  # the first import takes seconds: keep the loop serving
        if dist.is_initialized():
            raise CollectiveError(f"rank {rank}: this process already has a torch.distributed group open")
        device = _resolve_device(torch, device, rank)
        backend = "nccl" if device.startswith("cuda") else "gloo"

        timeout = datetime.timedelta(seconds=timeout_s)

        def init() -> Any:
            if backend == "nccl":
                # NCCL binds the communicator to the current CUDA device; pick it before the group exists.
                torch.cuda.set_device(torch.device(device))
            # rank 0 serves the store; the others connect to it, retrying until the timeout while it starts
            server = dist.TCPStore(master_addr, master_port, world, is_master=rank == 0, timeout=timeout,
                                   wait_for_workers=False)
            store = dist.PrefixStore(f"{group}/", server)
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, timeout=timeout)
            return store

        try:
            store = await asyncio.to_thread(init)
        except _TORCH_FAILURES as exc:
            if rank == 0 and _address_in_use(exc):
                raise PortTaken(f"rank 0 could not listen on port {master_port} for the torch {backend} group: "
                                "another process on this node holds it") from exc
            raise CollectiveError(
                f"rank {rank} of {world} could not join the torch {backend} group at "
                f"{master_addr}:{master_port}: {exc}"
            ) from exc
        return cls(rank, world, device, store)

    async def allreduce(self, array: np.ndarray) -> np.ndarray:
        """Elementwise sum over all ranks; the caller's array is left untouched (the sum lands in a fresh one)."""
        buf = _checked_copy(array, "allreduce")
        torch, dist = _torch()

        def run() -> np.ndarray:
            tensor = self._to_device(torch, buf)
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            return self._to_numpy(tensor, buf)

        return await self._call("allreduce", run)

    async def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        """``root``'s array on every rank; every rank passes an array of the same shape and dtype."""
        if not 0 <= root < self.world:
            raise ValueError(f"broadcast root {root} outside a world of {self.world}")
        buf = _checked_copy(array, "broadcast")
        torch, dist = _torch()

        def run() -> np.ndarray:
            tensor = self._to_device(torch, buf)
            dist.broadcast(tensor, src=root)
            return self._to_numpy(tensor, buf)

        return await self._call("broadcast", run)

    async def abort(self, reason: str) -> None:
        """Tear the group down now: the closed connections make the peers' pending calls fail instead of wait out
        the timeout. ``reason`` goes to the rendezvous store first, so the peers' errors can say why."""
        if self._closed:
            return
        self._broken = f"aborted: {reason}"
        self._closed = True
        _, dist = _torch()
        if self._store is not None:
            try:
                await asyncio.to_thread(self._store.set, _ABORT_KEY.format(rank=self.rank), reason)
            except _TORCH_FAILURES:
                pass  # the store is gone too; the peers still fail, just without the reason
        # NCCL's destroy can wait on stuck kernels; torch's abort (private, hence looked up) does not. Gloo's
        # destroy closes its sockets at once, which is all a peer needs to notice.
        abort_group = getattr(dist.distributed_c10d, "_abort_process_group", None)
        teardown = dist.destroy_process_group
        if abort_group is not None and self.device.startswith("cuda"):
            teardown = abort_group
        try:
            await asyncio.to_thread(_if_initialized, dist, teardown)
        except _TORCH_FAILURES:
            pass  # giving up anyway: a group that fails to tear down cleanly is still gone for this rank

    async def close(self) -> None:
        """Leave the group and free its sockets (and its CUDA communicator); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        _, dist = _torch()
        self._store = None  # on rank 0 this is the store server; the peers are done with it by now
        try:
            await asyncio.to_thread(_if_initialized, dist, dist.destroy_process_group)
        except _TORCH_FAILURES as exc:
            raise CollectiveError(f"rank {self.rank} of {self.world} could not leave the torch group: {exc}") from exc

    async def _call(self, op: str, run: Callable[[], T]) -> T:
        """Run one blocking collective in a worker thread; a torch failure becomes a CollectiveError naming the rank
        and leaves the group marked broken, since torch groups do not recover from a failed collective."""
        async with self._lock:
            if self._broken is not None:
                raise CollectiveError(
                    f"torch {op} on rank {self.rank} of {self.world}: group unusable ({self._broken})"
                )
            if self._closed:
                raise CollectiveError(f"torch {op} on rank {self.rank} of {self.world}: group closed")
            try:
                return await asyncio.to_thread(run)
            except _TORCH_FAILURES as exc:
                self._broken = f"{op} failed: {exc}"
                why = await asyncio.to_thread(self._peer_abort_reasons)
                raise CollectiveError(f"torch {op} failed on rank {self.rank} of {self.world}: {why or exc}") from exc

    def _peer_abort_reasons(self) -> str:
        """What the peers that aborted said, as ``"rank 2: out of memory"``; empty when none did or the store is
        unreachable (a crashed peer leaves no reason, and then torch's own error is the best explanation)."""
        store, said = self._store, []
        if store is None:
            return ""
        try:
            for peer in range(self.world):
                key = _ABORT_KEY.format(rank=peer)
                if peer != self.rank and store.check([key]):
                    said.append(f"rank {peer}: {store.get(key).decode(errors='replace')}")
        except _TORCH_FAILURES:
            return ""
        return "; ".join(said)

    def _to_device(self, torch: Any, buf: np.ndarray) -> Any:
        """The tensor torch reduces: ``buf`` itself on CPU (shared memory, no copy), a device copy for NCCL."""
        tensor = torch.from_numpy(buf)
        return tensor if self.device == "cpu" else tensor.to(self.device)

    def _to_numpy(self, tensor: Any, buf: np.ndarray) -> np.ndarray:
        """The result as numpy: on CPU ``buf`` already holds it; from a GPU copy it back into ``buf``."""
        if self.device != "cpu":
            buf[...] = tensor.cpu().numpy()
        return buf


def _address_in_use(exc: BaseException) -> bool:
    """Whether torch failed to listen because the port is held: its libuv store says ``EADDRINUSE``, the older
    one ``errno: 98 - Address already in use``, and a bare socket error carries the errno."""
    text = str(exc)
    return getattr(exc, "errno", None) == errno.EADDRINUSE or "EADDRINUSE" in text or "address already in use" in \
        text.lower()


def _checked_copy(array: np.ndarray, op: str) -> np.ndarray:
    """A private, contiguous, writable copy of a 1-D float array: torch reduces in place, and the caller's array
    (maybe read-only, maybe a strided view) must not change under them."""
    array = np.asarray(array)
    if array.ndim != 1:
        raise ValueError(f"{op} takes a 1-D array, got shape {array.shape}")
    if array.dtype not in _FLOATS:
        raise ValueError(f"{op} takes float32 or float64, got {array.dtype}")
    return np.array(array, order="C", copy=True)


def _resolve_device(torch: Any, device: str, rank: int) -> str:
    """``"cpu"``, or a concrete ``"cuda:N"``: bare ``"cuda"`` spreads ranks over the visible GPUs round-robin."""
    if device == "cpu":
        return device
    if not device.startswith("cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if not torch.cuda.is_available():
        raise CollectiveError(f"rank {rank}: device {device!r} asked for, but torch sees no CUDA device")
    if device == "cuda":
        device = f"cuda:{rank % torch.cuda.device_count()}"
    return device


def _if_initialized(dist: Any, teardown: Callable[[], object]) -> None:
    """Tear down the default group if one is still there (abort then close must not fail)."""
    if dist.is_initialized():
        teardown()
