"""TLS to an SMSC: the certificate chain and the host name are verified unless `tls_verify = false` says otherwise
(a warning at start). Real TLS over loopback against the simulator, with the `self_signed` certificate of
conftest.py (for 127.0.0.1) and one made here for another name."""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
from pathlib import Path

import asyncpg
import pytest
from gw import enqueue, running_gateway, settings_for, wait_status

from gateway.settings import load_settings
from gateway.simulator import SimulatorConfig, SmscSimulator
from gateway.smpp import session as s
from gateway.smpp.client import TlsVerificationError, connect, tls_context
from gateway.smpp.pdu import BindTransceiver


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _open(sim: SmscSimulator, context: ssl.SSLContext) -> None:
    """Connect and bind over TLS, then unbind; raises what connect raises."""
    conn = await connect("127.0.0.1", sim.port, s.Session(), name="tls", on_request=lambda c, p: None,
                         ssl_context=context, timeout=5)
    bound = await conn.bind(BindTransceiver(system_id="smsgw", password="secret"))
    assert bound is not None
    await conn.unbind(timeout=2)


def test_settings_verify_by_default() -> None:
    smsc = load_settings(None, smsc={"a": {"system_id": "x", "password": "p", "tls": True}}).smsc["a"]
    assert smsc.tls_verify is True
    context = tls_context(smsc.tls_ca_file, verify=smsc.tls_verify)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


async def test_with_the_ca_file_it_binds(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    async with SmscSimulator(SimulatorConfig(tls_cert=cert, tls_key=key)) as sim:
        await _open(sim, tls_context(cert))
        assert sim.stats.binds == 1


async def test_without_the_ca_file_it_fails_at_once_naming_certificate_verification(
    self_signed: tuple[Path, Path],
) -> None:
    cert, key = self_signed
    async with SmscSimulator(SimulatorConfig(tls_cert=cert, tls_key=key)) as sim:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TlsVerificationError) as err:
            await _open(sim, tls_context(None))  # the system's CAs do not know a self-signed certificate
        assert loop.time() - started < 3  # refused in the handshake, not after a timeout
        assert sim.stats.binds == 0
    message = str(err.value)
    assert "TLS certificate verification failed" in message and "self-signed" in message, message
    assert "tls_ca_file" in message and f"127.0.0.1:{sim.port}" in message
    assert isinstance(err.value, OSError)  # the bind loop's retry-with-back-off path


@pytest.fixture
def other_name(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the name smsc.example only (not 127.0.0.1), and its key."""
    cert, key = tmp_path / "other.pem", tmp_path / "other.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=smsc.example",
         "-addext", "subjectAltName=DNS:smsc.example", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


async def test_the_host_name_is_checked(other_name: tuple[Path, Path]) -> None:
    """A certificate the CA file trusts, but made out to another name: refused for the name, not the chain."""
    cert, key = other_name
    async with SmscSimulator(SimulatorConfig(tls_cert=cert, tls_key=key)) as sim:
        with pytest.raises(TlsVerificationError, match="mismatch"):
            await _open(sim, tls_context(cert))
        assert sim.stats.binds == 0


async def test_tls_verify_false_binds_and_warns(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    records = _Records()
    logger = logging.getLogger("gateway.smpp.client")
    logger.addHandler(records)
    try:
        context = tls_context(None, verify=False, smsc="carrier_a")
    finally:
        logger.removeHandler(records)
    warnings = [r for r in records.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "verification is OFF" in warnings[0].getMessage()
    assert warnings[0].smsc == "carrier_a"  # type: ignore[attr-defined]
    async with SmscSimulator(SimulatorConfig(tls_cert=cert, tls_key=key)) as sim:
        await _open(sim, context)
        assert sim.stats.binds == 1


async def test_the_daemon_reports_the_verification_failure_then_binds_when_told_not_to_verify(
    db_pool: asyncpg.Pool, db_dsn: str, self_signed: tuple[Path, Path]
) -> None:
    """Through the settings: no CA file -> the bind fails with the reason on the dispatcher (status page, logs),
    nothing is sent; `tls_verify = false` -> it binds (with the warning) and sends."""
    cert, key = self_signed
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        async with SmscSimulator(SimulatorConfig(tls_cert=cert, tls_key=key, receipt_delay=0.01)) as sim:
            await enqueue(db_pool, 5)
            async with running_gateway(settings_for(db_dsn, sim, tls=True)) as gw:
                (disp,) = gw.dispatchers
                assert await sim.wait_for(lambda: disp.last_error is not None, timeout=10)
                assert sim.stats.binds == 0 and disp.binds_up == 0
            assert "TLS certificate verification failed" in str(disp.last_error), disp.last_error
            failed = [r for r in records.records if r.getMessage() == "bind failed"]
            assert failed and "certificate verification failed" in failed[0].error  # type: ignore[attr-defined]
            assert await db_pool.fetchval("SELECT count(*) FROM outbound_message WHERE status = 'queued'") == 5

            async with running_gateway(settings_for(db_dsn, sim, tls=True, tls_verify=False)):
                c = await wait_status(db_pool, "delivered", 5, timeout=20)
    finally:
        logging.getLogger().removeHandler(records)
    assert c == {"delivered": 5}
    assert any("verification is OFF" in r.getMessage() and getattr(r, "smsc", None) == "sim" for r in records.records)
