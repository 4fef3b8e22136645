"""A hostile SMSC (scripted, raw PDUs over loopback) against a real gateway and a real Postgres.

After each bad thing, a probe: a normal outbound message still ends delivered on a bind, and a normal MO is
stored. Every MO and receipt is stored or quarantined, and none is acknowledged before that: the scripted SMSC
looks into Postgres when each deliver_sm_resp arrives, and while the tables are locked no ack arrives at all.
The slow-database test holds a lock on the tables while thousands of receipts and MOs arrive: reading pauses,
the writer's buffer stays bounded, and everything is recorded and acknowledged after the lock is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import psutil
from gw import counts, enqueue, running_gateway, settings_for
from scripted_smsc import ScriptedSmsc, Sent, header, mo_pdu, receipt_pdu, receipt_text

from gateway.app import Gateway
from gateway.settings import Settings
from gateway.smpp import codec
from gateway.smpp.pdu import CommandId, DeliverSm, DeliverSmResp, Tag

LOCKED_TABLES = "outbound_message, pending_receipt, message_part, mo_part, inbound_message, quarantine"


def _settings(dsn: str, smsc: ScriptedSmsc, **dispatcher: object) -> Settings:
    s = settings_for(dsn, smsc, window=10, response_timeout=5.0, enquire_link_interval=2.0)  # type: ignore[arg-type]
    if dispatcher:
        s = s.model_copy(update={"dispatcher": s.dispatcher.model_copy(update=dispatcher)})
    return s


async def _until(cond: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await cond():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


async def _mo_stored(pool: asyncpg.Pool, text: str) -> bool:
    """The MO is in mo_part (not yet processed) or inbound_message (processed; the part is then deleted)."""
    return bool(await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM mo_part WHERE payload = $1)"
        " OR EXISTS (SELECT 1 FROM inbound_message WHERE body = $2)",
        text.encode(), text,
    ))


async def _receipt_stored(pool: asyncpg.Pool, message_id: str) -> bool:
    """The receipt is on its row, parked, or quarantined (the id written with U+FFFD for a NUL)."""
    return bool(await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM outbound_message WHERE smsc_message_id = $1 AND receipt_stat IS NOT NULL)"
        " OR EXISTS (SELECT 1 FROM pending_receipt WHERE message_id = $1)"
        " OR EXISTS (SELECT 1 FROM quarantine WHERE kind = 'receipt' AND fields->>'message_id' = $1)",
        message_id,
    ))


class AckWitness:
    """At each deliver_sm_resp, checks (in a task started at that moment) that what it acknowledges is stored."""

    def __init__(self, pool: asyncpg.Pool, smsc: ScriptedSmsc) -> None:
        self.pool = pool
        self.expect: dict[int, Callable[[], Awaitable[bool]]] = {}
        self.failures: list[str] = []
        self.checked = 0
        self._tasks: set[asyncio.Task[None]] = set()
        smsc.on_ack = self._on_ack

    def _on_ack(self, sent: Sent) -> None:
        check = self.expect.get(sent.seq)
        if check is None:
            return
        task = asyncio.get_running_loop().create_task(self._check(sent.seq, check))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, seq: int, check: Callable[[], Awaitable[bool]]) -> None:
        self.checked += 1
        if not await check():
            self.failures.append(f"seq {seq} acknowledged but not stored")

    async def settle(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks)


@contextlib.asynccontextmanager
async def _gateway(db_dsn: str, smsc: ScriptedSmsc, **dispatcher: object) -> AsyncIterator[Gateway]:
    async with running_gateway(_settings(db_dsn, smsc, **dispatcher)) as gw:
        await smsc.wait_bound()
        yield gw


class Prober:
    """A normal message through the bind and a normal MO from the SMSC, each checked end to end."""

    def __init__(self, pool: asyncpg.Pool, smsc: ScriptedSmsc, witness: AckWitness) -> None:
        self.pool, self.smsc, self.witness = pool, smsc, witness
        self.n = 0

    async def probe(self, after: str) -> None:
        self.n += 1
        await enqueue(self.pool, 1, start=9000 + self.n, body=f"probe {self.n}")
        await _until(lambda: self._delivered(self.n), 15, f"probe message {self.n} delivered after {after}")
        text = f"probe mo {self.n}"
        sent = self.smsc.deliver(mo_pdu(text))
        self.witness.expect[sent.seq] = lambda: _mo_stored(self.pool, text)
        await _until(lambda: _acked(sent), 10, f"probe MO {self.n} acknowledged after {after}")
        assert sent.acked_status == 0
        assert await _mo_stored(self.pool, text)

    async def _delivered(self, n: int) -> bool:
        return bool(await self.pool.fetchval(
            "SELECT status = 'delivered' FROM outbound_message WHERE body = $1", f"probe {n}"
        ))


async def _acked(sent: Sent) -> bool:
    return sent.acked_status is not None


async def test_hostile_pdus_never_stop_results_nor_acks_before_commit(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    async with ScriptedSmsc() as smsc, _gateway(db_dsn, smsc):
        witness = AckWitness(db_pool, smsc)
        prober = Prober(db_pool, smsc, witness)
        await prober.probe("bind")

        # (a) a receipt whose text id has a NUL inside (used to wedge the writer for good), and
        # (h) a receipt with err:² (isdigit() true, int() fails; used to crash the handler: never answered).
        await enqueue(db_pool, 1, start=100, body="for err")
        await _until(lambda: _status_is(db_pool, "for err", "delivered"), 10, "row for err: delivered")
        err_id = await db_pool.fetchval("SELECT smsc_message_id FROM outbound_message WHERE body = 'for err'")
        await db_pool.execute("UPDATE outbound_message SET status = 'submitted' WHERE body = 'for err'")
        # Sent while the tables are locked: nothing may be acknowledged until the lock goes.
        async with db_pool.acquire() as locker:
            tx = locker.transaction()
            await tx.start()
            await locker.execute(f"LOCK TABLE {LOCKED_TABLES} IN ACCESS EXCLUSIVE MODE")
            nul = smsc.deliver(receipt_pdu(receipt_text("12\x0034")))
            witness.expect[nul.seq] = lambda: _receipt_stored(db_pool, "12\ufffd34")
            sup = smsc.deliver(receipt_pdu(receipt_text(err_id, stat="UNDELIV", err="\xb2")))
            witness.expect[sup.seq] = lambda: _status_is(db_pool, "for err", "undeliverable")
            mo = smsc.deliver(mo_pdu("locked mo"))
            witness.expect[mo.seq] = lambda: _mo_stored(db_pool, "locked mo")
            await asyncio.sleep(1.0)
            assert (nul.acked_status, sup.acked_status, mo.acked_status) == (None, None, None)
            await tx.rollback()
        for sent in (nul, sup, mo):
            await _until(lambda s=sent: _acked(s), 10, f"seq {sent.seq} acknowledged")
        row = await db_pool.fetchrow(
            "SELECT status, error_code, reason FROM outbound_message WHERE body = 'for err'"
        )
        assert row["status"] == "undeliverable" and row["error_code"] is None and "err:\u00b2" in row["reason"]
        assert await _receipt_stored(db_pool, "12\ufffd34")
        await prober.probe("NUL id and err:\u00b2 receipts")

        # (b) submit_sm_resp with command_status 0xFFFFFFFF (used to overflow the int column, forever).
        smsc.submit_statuses.append(0xFFFFFFFF)
        await enqueue(db_pool, 1, start=200, body="ffffffff")
        await _until(lambda: _status_is(db_pool, "ffffffff", "failed"), 10, "0xFFFFFFFF row failed")
        assert await db_pool.fetchval("SELECT error_code FROM outbound_message WHERE body = 'ffffffff'") == 0xFFFFFFFF
        await prober.probe("command_status 0xFFFFFFFF")

        # (c) command_length 0, 15 and 0xFFFFFFFF: the stream cannot be resynchronised: drop, re-bind.
        for length in (0, 15, 0xFFFFFFFF):
            binds = smsc.stats.binds
            old = smsc.conn()
            bad = header(length, CommandId.DELIVER_SM) if length >= 16 else struct.pack(">I", length) + b"x" * 12
            smsc.send_raw(bad)
            await asyncio.wait_for(old.closed.wait(), 5)
            await smsc.wait_bound(binds + 1)
            await prober.probe(f"command_length {length}")

        # (d) unknown command ids: answered with generic_nack (ESME_RINVCMDID), the bind stays.
        binds = smsc.stats.binds
        nacks = len(smsc.stats.generic_nacks)
        smsc.send_raw(header(16, 0x00000999, seq=77) + header(16, 0x00010200, seq=78))
        await _until(lambda: _true(len(smsc.stats.generic_nacks) >= nacks + 2), 5, "generic_nacks")
        assert smsc.stats.generic_nacks[-2:] == [0x03, 0x03]
        await prober.probe("unknown command ids")
        assert smsc.stats.binds == binds

        # (e) an MO whose TLV length runs past the body: the truncated tail is ignored, the MO is stored.
        body = codec.encode(mo_pdu("tlv past body"))[16:] + struct.pack(">HH", 0x0424, 200) + b"abc"
        seq = smsc.next_seq()
        tlv = smsc.track_raw(seq)
        witness.expect[seq] = lambda: _mo_stored(db_pool, "tlv past body")
        smsc.send_raw(header(16 + len(body), CommandId.DELIVER_SM, seq=seq) + body)
        await _until(lambda: _acked(tlv), 10, "MO with a TLV past the body acknowledged")
        await prober.probe("TLV past the body")

        # (f) a deliver_sm_resp nobody asked for: ignored (no request of ours has that sequence number).
        smsc.send_raw(codec.encode(DeliverSmResp(sequence_number=424242)))
        await prober.probe("unsolicited deliver_sm_resp")
        assert smsc.stats.binds == binds

        # (g) duplicate receipts: the same receipt twice, for a delivered row and for an unknown id (both in one
        # batch: two parked receipts with one key).
        mid = await db_pool.fetchval("SELECT smsc_message_id FROM outbound_message WHERE body = 'probe 1'")
        dups = [smsc.deliver(receipt_pdu(receipt_text(i))) for i in (mid, mid, "777777", "777777")]
        for d, i in zip(dups, (mid, mid, "777777", "777777"), strict=True):
            witness.expect[d.seq] = lambda i=i: _receipt_stored(db_pool, i)
        for d in dups:
            await _until(lambda d=d: _acked(d), 10, "duplicate receipt acknowledged")
        await prober.probe("duplicate receipts")

        await witness.settle()
        assert witness.failures == []
        assert witness.checked >= 15
        # Nothing was answered with an error, and every deliver_sm was answered.
        assert {s.acked_status for s in smsc.sent.values()} == {0}
        c = await counts(db_pool)
    assert c.get("claimed", 0) == 0 and c.get("queued", 0) == 0


async def _status_is(pool: asyncpg.Pool, body: str, status: str) -> bool:
    return bool(await pool.fetchval("SELECT status = $2 FROM outbound_message WHERE body = $1", body, status))


async def _true(value: bool) -> bool:
    return value


SLOW_RECEIPTS = 8000
# After the receipts, MOs of 4 kB (message_payload) until the SMSC's socket stays full: enough bytes to fill
# the kernel's socket buffers (loopback autotunes them to megabytes), so the SMSC itself is seen to stop.
SLOW_MOS_MAX = 10_000
MO_PAYLOAD = 4000
MAX_PENDING = 1000
RSS_BOUND = 100 * 1024 * 1024  # growth of this process (gateway + scripted SMSC + test) during the stall


async def test_slow_database_pauses_reading_and_loses_nothing(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    """8,000 receipts, then 4 kB MOs, arrive while Postgres is stalled by a lock on the tables."""
    async with ScriptedSmsc(receipts=False) as smsc, _gateway(db_dsn, smsc, writer_max_pending=MAX_PENDING) as gw:
        assert gw.writer is not None
        writer = gw.writer
        await enqueue(db_pool, SLOW_RECEIPTS)
        await _until(lambda: _count_is(db_pool, "submitted", SLOW_RECEIPTS), 60, "all rows submitted")
        ids = [r["smsc_message_id"] for r in await db_pool.fetch("SELECT smsc_message_id FROM outbound_message")]

        peak = [0]
        original_poke = writer._poke

        def poke() -> None:  # exact peak of the buffer, measured at every add
            original_poke()
            peak[0] = max(peak[0], writer.pending)

        writer._poke = poke  # type: ignore[method-assign]
        proc = psutil.Process()
        rss_before = proc.memory_info().rss
        rss_peak = rss_before
        conn = smsc.conn()

        stop_pushing = asyncio.Event()
        mos_sent = [0]

        async def push() -> None:
            for i in ids:
                await conn.writable.wait()  # TCP back-pressure: a full socket stops this SMSC
                smsc.deliver(receipt_pdu(receipt_text(i)), conn)
                await asyncio.sleep(0)
            for n in range(SLOW_MOS_MAX):
                await conn.writable.wait()
                if stop_pushing.is_set():
                    return
                payload = f"slow mo {n} ".encode().ljust(MO_PAYLOAD, b"x")
                smsc.deliver(DeliverSm(source_addr="12025550199", destination_addr="12345",
                                       tlvs={Tag.MESSAGE_PAYLOAD: payload}), conn)
                mos_sent[0] += 1
                await asyncio.sleep(0)

        async with db_pool.acquire() as locker:
            tx = locker.transaction()
            await tx.start()
            await locker.execute(f"LOCK TABLE {LOCKED_TABLES} IN ACCESS EXCLUSIVE MODE")
            sent_before = len(smsc.sent)
            pusher = asyncio.create_task(push())
            sent_seen: list[int] = []
            for _ in range(40):  # 4 s under the lock
                await asyncio.sleep(0.1)
                sent_seen.append(len(smsc.sent))
                rss_peak = max(rss_peak, proc.memory_info().rss)
            paused = writer.flow.paused
            smsc_blocked = not conn.writable.is_set()
            sent_during_stall = len(smsc.sent) - sent_before
            acked_during_stall = sum(1 for x in list(smsc.sent.values())[sent_before:] if x.acked_status is not None)
            stop_pushing.set()
            await tx.rollback()
        await asyncio.wait_for(pusher, 60)
        await _until(lambda: _true(smsc.unacked == 0), 60, "every deliver_sm acknowledged")
        await _until(lambda: _count_is(db_pool, "delivered", SLOW_RECEIPTS), 30, "every receipt recorded")
        await _until(lambda: _mos_stored(db_pool, mos_sent[0]), 30, "every MO stored")
        writer._poke = original_poke  # type: ignore[method-assign]
        assert not writer.flow.paused

    print(
        f"\nslow database: {SLOW_RECEIPTS} receipts + {mos_sent[0]} MOs of {MO_PAYLOAD} B; sent by the SMSC while "
        f"stalled: {sent_during_stall} (last second: {sent_seen[-10:]}); peak writer pending {peak[0]} "
        f"(bound {MAX_PENDING}); RSS growth {(rss_peak - rss_before) / 1e6:.1f} MB"
    )
    assert paused, "reading was not paused while the database was stalled"
    assert acked_during_stall == 0
    # The SMSC was held back: its socket stayed full and what it sent stopped growing during the stall.
    assert smsc_blocked and sent_seen[-1] == sent_seen[-10] and mos_sent[0] < SLOW_MOS_MAX
    # Buffered rows: the bound plus at most one 4 KiB chunk of PDUs decoded after the pause was asked for.
    assert peak[0] <= MAX_PENDING + 4096 // 60
    assert rss_peak - rss_before < RSS_BOUND
    assert await db_pool.fetchval("SELECT count(*) FROM quarantine") == 0


async def _count_is(pool: asyncpg.Pool, status: str, n: int) -> bool:
    return (await counts(pool)).get(status, 0) >= n


async def _mos_stored(pool: asyncpg.Pool, n: int) -> bool:
    stored = await pool.fetchval(
        "SELECT (SELECT count(*) FROM mo_part WHERE convert_from(payload, 'UTF8') LIKE 'slow mo %')"
        " + (SELECT count(*) FROM inbound_message WHERE body LIKE 'slow mo %')"
    )
    return bool(stored >= n)
