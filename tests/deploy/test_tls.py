"""TLS as docs/security.md describes it: a nats-server with a certificate from a private CA; AIOS clients reach it
with ``tls://`` URLs and ``SSL_CERT_FILE`` naming the CA (both the event store's own connection and nats-py), and
refuse a server they cannot verify."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from aios.common.errors import StoreUnavailable
from aios.common.events import JobSubmitted
from aios.common.natsserver import NatsServer
from aios.common.store import connect
from aios.common.wire import RawNatsConnection

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _certificates(tmp: Path) -> tuple[Path, Path, Path]:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=aios-test-ca",
            "-keyout", "ca-key.pem", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server-key.pem",
            "-out", "server.csr")
    (tmp / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
            "-days", "1", "-extfile", "san.ext", "-out", "server.pem")
    return tmp / "ca.pem", tmp / "server.pem", tmp / "server-key.pem"


async def test_clients_speak_tls_to_a_server_of_a_private_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca, cert, key = _certificates(tmp_path)
    with NatsServer(tmp_path / "js", extra_args=["--tls", "--tlscert", str(cert), "--tlskey", str(key)]) as server:
        url = f"tls://127.0.0.1:{server.port}"
        # the system's CAs do not know ours: refused, not trusted blindly
        with pytest.raises(StoreUnavailable, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await RawNatsConnection.connect([url], timeout=5)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        store = await connect([url])
        await store.append("job.tls-1", JobSubmitted(aggregate_id="tls-1", tenant="t", spec={}))
        assert [e.aggregate_id for e in (await store.read("job.tls-1")).events] == ["tls-1"]
        await store.close()
