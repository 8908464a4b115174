"""Shared fixtures: a real nats-server for the session, a private one that tests may kill, and an event store on
its own stream per test so tests never see each other's events."""

from __future__ import annotations

import os
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from aios.common.natsserver import NatsServer
from aios.common.store import EventStore, connect_nats
from aios.common.wire import new_token

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server with JetStream for the whole session, on a free loopback port, stopped by PID."""
    server = NatsServer(tmp_path_factory.mktemp("nats-session"), server_name="aios-test")
    server.start()
    yield server
    server.stop()
    assert not server.running()


@pytest.fixture
def killable_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test alone: ``kill()`` (SIGKILL) and ``start()`` again on the same port and store."""
    server = NatsServer(tmp_path / "nats", server_name="aios-killable")
    server.start()
    yield server
    server.kill()


async def open_store(url: str, **options: object) -> EventStore:
    """An EventStore on a fresh stream and subject prefix, so each test has a log of its own."""
    token = new_token()[:10]
    nc = await connect_nats([url], name="aios-test")
    store = EventStore(nc, [url], stream=f"T_{token}", prefix=f"t{token}.evt", **options)  # type: ignore[arg-type]
    await store.ensure_stream()
    return store


@pytest_asyncio.fixture
async def store(nats_server: NatsServer) -> AsyncIterator[EventStore]:
    s = await open_store(nats_server.url)
    yield s
    try:
        await s.js.delete_stream(s.stream)
    finally:
        await s.close()


@pytest.fixture
def aios_env(tmp_path: Path) -> dict[str, str]:
    """Environment for `aios` subprocesses: the venv's tools first, test helpers importable, data in tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIOS_", "OTEL_"))}
    env["PYTHONPATH"] = str(REPO / "tests" / "support") + os.pathsep + env.get("PYTHONPATH", "")
    env["AIOS_DATA_DIR"] = str(tmp_path / "data")
    return env
