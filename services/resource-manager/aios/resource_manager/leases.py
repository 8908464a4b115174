"""The lease ledger: which job holds which device. Pure; folded from ``DevicesLeased``/``DevicesReleased``/``NodeLost``.

Writers decide with :func:`check_grant` on the folded ledger and append against the node's version, so the log
never holds two leases of one device. The fold is total anyway: a lease event that would double-book a device (only
possible through a bug or a hand-written event) is refused by the fold and recorded in ``violations``.
"""

from __future__ import annotations

import msgspec

from aios.common.errors import AiosError


class LeaseConflict(AiosError):
    """Devices asked for are held by another job (or do not exist on the node)."""


class LeaseBook(msgspec.Struct):
    holder: dict[str, str] = {}
    """device uuid -> job id"""
    node_of: dict[str, str] = {}
    """device uuid -> node id (for devices that are leased)"""
    violations: list[str] = []

    def devices_of(self, job_id: str, node_id: str | None = None) -> list[str]:
        return sorted(u for u, j in self.holder.items() if j == job_id and (node_id is None or self.node_of[u] == node_id))

    def jobs_on(self, node_id: str) -> list[str]:
        return sorted({j for u, j in self.holder.items() if self.node_of[u] == node_id})

    def is_free(self, uuid: str) -> bool:
        return uuid not in self.holder


def check_grant(book: LeaseBook, job_id: str, device_uuids: list[str]) -> None:
    """Raise :class:`LeaseConflict` unless every device is free or already this job's."""
    if len(set(device_uuids)) != len(device_uuids):
        raise LeaseConflict(f"job {job_id}: a device is listed twice in {device_uuids}")
    taken = {u: book.holder[u] for u in device_uuids if book.holder.get(u, job_id) != job_id}
    if taken:
        raise LeaseConflict(f"job {job_id}: devices already leased: "
                            + ", ".join(f"{u} to {j}" for u, j in sorted(taken.items())))


def grant(book: LeaseBook, node_id: str, job_id: str, device_uuids: list[str]) -> LeaseBook:
    try:
        check_grant(book, job_id, device_uuids)
    except LeaseConflict as exc:
        book.violations.append(str(exc))
        return book
    for u in device_uuids:
        book.holder[u] = job_id
        book.node_of[u] = node_id
    return book


def release(book: LeaseBook, node_id: str, job_id: str, device_uuids: list[str] | None = None) -> LeaseBook:
    """Give back ``device_uuids`` of the job on the node (all of them when None or empty)."""
    targets = device_uuids or book.devices_of(job_id, node_id)
    for u in targets:
        if book.holder.get(u) == job_id and book.node_of.get(u) == node_id:
            del book.holder[u]
            del book.node_of[u]
    return book


def release_node(book: LeaseBook, node_id: str) -> LeaseBook:
    for u in [u for u, n in book.node_of.items() if n == node_id]:
        del book.holder[u]
        del book.node_of[u]
    return book
