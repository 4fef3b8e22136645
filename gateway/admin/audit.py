"""`smsgw audit`: the CTIA self-audit, run against the real keyword configuration but never the carrier.

A private Postgres cluster (``EmbeddedPostgres`` in a temporary directory), the built-in SMSC simulator on a
free loopback port, and a gateway whose settings are the loaded ones with the database, every SMSC, the routes
and the webhook endpoints replaced (keywords, inbound and dispatcher settings kept; metrics off; quiet hours off,
so the checks do not depend on the time of day). Then, per short code, from fresh numbers, what an auditor texts:

- HELP: program name, contact, frequency, "Msg&data rates may apply", how to stop, one segment;
- STOP: opt-out confirmed, program name, no more messages, one segment;
- after STOP: a marketing and a transactional message to that number are refused; HELP is still answered;
- START: the reply confirms the subscription (and has what an opt-in confirmation needs), and a marketing
  message to the list is then delivered; after another STOP, UNSTOP's reply likewise;
- each join keyword of each list ("JOIN <list>" for a list without one): program name, frequency, rates,
  how to stop, how to get help, one segment.

Every wait is bounded (``reply_timeout`` per MO reply); the gateway, the simulator and the cluster are always
stopped. The text checks themselves are in ``gateway.admin.audit_rules``.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from gateway.admin import audit_rules as rules
from gateway.settings import DatabaseSettings, MetricsSettings, Settings, SmscSettings
from gateway.smpp.pdu import Tag
from keywords.config import ShortCodeKeywords

if TYPE_CHECKING:
    from gateway.simulator import SmscSimulator, SubmitRecord

__all__ = ["Check", "audit_settings", "run_audit", "run_audit_isolated"]

log = logging.getLogger(__name__)

_SIM_ACCOUNT = ("audit", "auditpw")
_SAR_REF, _SAR_TOTAL, _SAR_SEQ = Tag.SAR_MSG_REF_NUM, Tag.SAR_TOTAL_SEGMENTS, Tag.SAR_SEGMENT_SEQNUM
_FINAL = ("submitted", "delivered", "undeliverable", "expired", "rejected", "failed")


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the audit: a short code, what was checked, and what is missing (empty: passed)."""

    short_code: str
    name: str
    missing: tuple[str, ...] = ()
    reply: str | None = None  # the reply text the check looked at, if any
    outcome: str | None = None  # for a message the check inserted: "status / reason" as it ended

    @property
    def passed(self) -> bool:
        return not self.missing

    def line(self) -> str:
        if self.passed:
            return f"PASS  {self.short_code}  {self.name}"
        return f"FAIL  {self.short_code}  {self.name}  {'; '.join(self.missing)}"


def audit_settings(settings: Settings, *, dsn: str, sim_port: int) -> Settings:
    """``settings`` with a private database and the simulator as the only SMSC; nothing else can be reached.

    Built with ``model_copy`` (no environment read), so SMSGW_* variables cannot point it back at a carrier.
    """
    system_id, password = _SIM_ACCOUNT
    sim = SmscSettings(
        host="127.0.0.1",
        port=sim_port,
        system_id=system_id,
        password=password,  # type: ignore[arg-type]  # pydantic turns it into a SecretStr
        window=20,
        connect_timeout=5.0,
        bind_timeout=5.0,
        response_timeout=5.0,
        reconnect_min=0.05,
        reconnect_max=0.5,
    )
    dispatcher = settings.dispatcher.model_copy(update={"quiet_hours": False, "shutdown_timeout": 5.0})
    return settings.model_copy(
        update={
            "database": DatabaseSettings(url=dsn),  # type: ignore[arg-type]
            "smsc": {"audit_sim": sim},
            "route": [],
            "webhook": {},
            "metrics": MetricsSettings(enabled=False),
            "dispatcher": dispatcher,
        }
    )


def _concat(record: SubmitRecord) -> tuple[int, int, int] | None:
    """(reference, total, sequence) of a concatenated part: UDH IE 0x00 / 0x08, or the SAR TLVs; None if single."""
    sm = record.short_message
    if record.esm_class & 0x40 and sm:
        udh, i = sm[1 : 1 + sm[0]], 0
        while i + 1 < len(udh):
            iei, length = udh[i], udh[i + 1]
            data = udh[i + 2 : i + 2 + length]
            if iei == 0x00 and length == 3:
                return data[0], data[1], data[2]
            if iei == 0x08 and length == 4:
                return int.from_bytes(data[:2], "big"), data[2], data[3]
            i += 2 + length
    tlvs = record.tlvs
    if all(tag in tlvs for tag in (_SAR_REF, _SAR_TOTAL, _SAR_SEQ)):
        return (int.from_bytes(tlvs[_SAR_REF], "big"), tlvs[_SAR_TOTAL][0], tlvs[_SAR_SEQ][0])
    return None


class _Auditor:
    """Runs the MOs for one short code at a time against a running gateway and simulator."""

    def __init__(self, sim: SmscSimulator, conn: asyncpg.Connection, reply_timeout: float) -> None:
        self.sim = sim
        self.conn = conn
        self.reply_timeout = reply_timeout
        self._next_number = 0

    def fresh_number(self) -> str:
        self._next_number += 1
        return f"1555017{self._next_number:04d}"

    def _records_to(self, short_code: str, number: str) -> list[SubmitRecord]:
        return [
            r for r in self.sim.submits
            if r.destination_addr.lstrip("+") == number and r.source_addr == short_code and r.status == 0
        ]

    def _texts_to(self, short_code: str, number: str) -> list[str]:
        return [r.text for r in self._records_to(short_code, number)]

    def _reply(self, short_code: str, number: str, before: int) -> str | None:
        """The first message sent to ``number`` after its first ``before`` submits, its parts joined; None until
        all its parts arrived."""
        records = self._records_to(short_code, number)[before:]
        if not records:
            return None
        first = _concat(records[0])
        if first is None:
            return records[0].text
        ref, total, _seq = first
        parts: dict[int, str] = {}
        for record in records:
            info = _concat(record)
            if info is not None and info[:2] == (ref, total):
                parts.setdefault(info[2], record.text)
        return "".join(parts[seq] for seq in sorted(parts)) if len(parts) >= total else None

    async def _until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        try:
            return await self.sim.wait_for(predicate, timeout=timeout)
        except TimeoutError:
            return False

    async def text(self, short_code: str, number: str, body: str) -> str | None:
        """Send ``body`` from ``number`` to ``short_code``; the reply the gateway sent, or None within the timeout."""
        before = len(self._records_to(short_code, number))
        delivery = await self.sim.inject_mo(number, short_code, body)
        if not await self._until(lambda: delivery.acked, self.reply_timeout):
            return None
        if not await self._until(lambda: self._reply(short_code, number, before) is not None, self.reply_timeout):
            return None
        return self._reply(short_code, number, before)

    async def send(self, short_code: str, number: str, body: str, message_class: str,
                   list_name: str | None) -> tuple[str, str | None] | None:
        """Insert a message as a producer would; its (status, reason) once final, or None within the timeout."""
        row_id = await self.conn.fetchval(
            "INSERT INTO outbound_message (source, destination, body, message_class, list_name)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id",
            short_code, "+" + number, body, message_class, list_name,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reply_timeout
        while True:
            row = await self.conn.fetchrow("SELECT status, reason FROM outbound_message WHERE id = $1", row_id)
            if row is not None and row["status"] in _FINAL:
                return row["status"], row["reason"]
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(0.05)

    @staticmethod
    def _body(program: str, what: str) -> str:
        """A message body any content rule accepts: program name and opt-out instruction, one segment."""
        return f"{program}: audit test message ({what}). Reply STOP to opt out."

    async def seen_at_smsc(self, short_code: str, number: str, body: str) -> bool:
        return await self._until(lambda: body in self._texts_to(short_code, number), self.reply_timeout)

    async def audit(self, short_code: str, cfg: ShortCodeKeywords) -> list[Check]:
        checks: list[Check] = []

        def add(name: str, missing: list[str] | tuple[str, ...], reply: str | None = None,
                outcome: tuple[str, str | None] | None = None) -> None:
            ended = None if outcome is None else f"{outcome[0]} / {outcome[1] or '-'}"
            checks.append(Check(short_code, name, tuple(missing), reply, ended))

        no_reply = (f"no reply within {self.reply_timeout:g} s",)
        programs = [cfg.program]
        list_name = cfg.effective_default_list or (cfg.lists[0].name if cfg.lists else None)
        list_cfg = cfg.list_named(list_name) if list_name else None
        list_programs = programs + ([list_cfg.program] if list_cfg else [])
        list_frequencies = [cfg.frequency] + ([list_cfg.frequency] if list_cfg else [])

        number = self.fresh_number()
        reply = await self.text(short_code, number, "HELP")
        add("HELP reply", no_reply if reply is None else rules.help_missing(
            reply, programs=programs, frequencies=[cfg.frequency]), reply)

        if list_name is not None:
            # An existing subscriber (as a web form would sign one up), so the STOP has something to end.
            await self.conn.execute(
                "SELECT smsgw_opt_in($1, $2, $3, 'api', NULL, NULL, NULL, 'smsgw audit')",
                short_code, "+" + number, list_name,
            )
        reply = await self.text(short_code, number, "STOP")
        add("STOP reply", no_reply if reply is None else rules.stop_missing(reply, programs=programs), reply)

        for message_class, name in (("marketing", "marketing after STOP refused"),
                                    ("transactional", "transactional after STOP refused")):
            outcome = await self.send(short_code, number, self._body(list_programs[-1], message_class),
                                      message_class, list_name if message_class == "marketing" else None)
            if outcome is None:
                add(name, (f"not final within {self.reply_timeout:g} s",))
            elif outcome[0] == "rejected" and outcome[1] in ("opted_out", "not_subscribed"):
                add(name, (), outcome=outcome)
            else:
                add(name, (f"ended {outcome[0]} / {outcome[1]}, not rejected / opted_out",), outcome=outcome)

        reply = await self.text(short_code, number, "HELP")
        add("HELP after STOP answered", no_reply if reply is None else (), reply)

        reply = await self.text(short_code, number, "START")
        add("START reply", no_reply if reply is None else rules.opt_in_missing(
            reply, programs=list_programs, frequencies=list_frequencies), reply)
        # START re-subscribes to the default list (or the only one); without one it only lifts the opt-out, so
        # then a transactional message is what must flow again.
        restored = cfg.effective_default_list
        body = self._body(list_programs[-1], "after START")
        outcome = await self.send(short_code, number, body, "marketing" if restored else "transactional", restored)
        what = f"marketing to list {restored!r}" if restored else "transactional"
        if outcome is None:
            add("START restores delivery", (f"{what} not sent within {self.reply_timeout:g} s",))
        elif outcome[0] not in ("submitted", "delivered"):
            add("START restores delivery", (f"{what} ended {outcome[0]} / {outcome[1]}",), outcome=outcome)
        else:
            add("START restores delivery", () if await self.seen_at_smsc(short_code, number, body)
                else (f"{what} not seen at the SMSC",), outcome=outcome)

        # UNSTOP is the other standard way back: out once more, then UNSTOP.
        await self.text(short_code, number, "STOP")
        reply = await self.text(short_code, number, "UNSTOP")
        add("UNSTOP reply", no_reply if reply is None else rules.opt_in_missing(
            reply, programs=list_programs, frequencies=list_frequencies), reply)

        for program_list in cfg.lists:
            words = program_list.join_keywords or (f"JOIN {program_list.key}",)
            for word in words:
                reply = await self.text(short_code, self.fresh_number(), word)
                add(f"join {word} ({program_list.name}) reply", no_reply if reply is None else rules.join_missing(
                    reply, programs=[cfg.program, program_list.program],
                    frequencies=[program_list.frequency]), reply)
        return checks


async def run_audit(
    settings: Settings,
    short_codes: list[str],
    *,
    dsn: str,
    reply_timeout: float = 5.0,
    on_check: Callable[[Check], None] | None = None,
) -> list[Check]:
    """Audit ``short_codes`` with a gateway on database ``dsn`` (migrated here) and a simulator of its own."""
    from gateway.app import Gateway
    from gateway.simulator import SimulatorConfig, SmscSimulator

    system_id, password = _SIM_ACCOUNT
    sim = SmscSimulator(SimulatorConfig(accounts={system_id: password}, receipt_delay=0.05, deliver_timeout=1.0))
    gw: Gateway | None = None
    conn: asyncpg.Connection | None = None
    checks: list[Check] = []
    try:
        await sim.start()
        gw = Gateway(audit_settings(settings, dsn=dsn, sim_port=sim.port))
        async with asyncio.timeout(60):
            await gw.start()
        await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
        conn = await asyncpg.connect(dsn, timeout=10)
        auditor = _Auditor(sim, conn, reply_timeout)
        for short_code in short_codes:
            for check in await auditor.audit(short_code, settings.keywords[short_code]):
                checks.append(check)
                if on_check is not None:
                    on_check(check)
        return checks
    finally:
        if conn is not None:
            await conn.close(timeout=5)
        if gw is not None:
            try:
                async with asyncio.timeout(20):
                    await gw.stop()
            except Exception as exc:  # the cluster is stopped next whatever happened here
                log.warning("gateway stop failed: %s", exc)
        await sim.stop()


async def run_audit_isolated(
    settings: Settings,
    short_codes: list[str],
    *,
    reply_timeout: float = 5.0,
    on_check: Callable[[Check], None] | None = None,
) -> list[Check]:
    """``run_audit`` on a private Postgres cluster in a temporary directory, removed afterwards."""
    from gateway.db.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="smsgw-audit-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", shared_buffers="32MB")
        try:
            await asyncio.to_thread(pg.start)
            return await run_audit(settings, short_codes, dsn=pg.dsn(), reply_timeout=reply_timeout,
                                   on_check=on_check)
        finally:
            await asyncio.to_thread(pg.stop)
