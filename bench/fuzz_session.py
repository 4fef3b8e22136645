"""Coverage-guided fuzzing of the SMPP layer with atheris (libFuzzer), for runs of minutes to hours.

Rule of this module: it adds no property of its own to the session. It drives the codec (`decode`, `Framer`) and a
bound sans-IO `Session` through `SessionDriver` of tests/test_session_fuzz.py, which checks the SMPP 3.4 rules
after every step (no exception escapes, generic_nack and close on a bad command_length, generic_nack 0x03 and the
bind kept on an unknown command id, the framer's buffer below its cap, every written octet a well-formed PDU).
An input that breaks one is a crash: libFuzzer saves it as crash-<sha1>.

Usage (atheris is the optional extra `fuzz`, not a test dependency):
    .venv/bin/pip install -e '.[fuzz]'      # or: .venv/bin/pip install atheris
    .venv/bin/python bench/fuzz_session.py -atheris_runs=200000         # or -max_total_time=60; any libFuzzer flag
    .venv/bin/python bench/fuzz_session.py -max_total_time=3600 CORPUS  # keeps what it learns in CORPUS
    .venv/bin/python bench/fuzz_session.py crash-<sha1>                 # replays one saved input
The last line on stdout is one JSON object: runs, execs_per_s, crashes, elapsed_s, corpus. Without a corpus dir
a temporary one (removed at the end) is seeded with well-formed traffic (`seeds`), so coverage starts from real PDUs.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))

# Instrument the code under test and the model that checks it (its branches, e.g. "is this our unbind's answer",
# and its comparisons with command ids guide the fuzzer too); Hypothesis and pytest internals would be noise.
with atheris.instrument_imports(include=["gateway.smpp", "test_session_fuzz"]):
    from test_session_fuzz import (
        BUFFER_CAP,
        Answer,
        Feed,
        Fill,
        SessionDriver,
        StartUnbind,
        Step,
        Submit,
        Tick,
    )

    from gateway.smpp import codec
    from gateway.smpp.pdu import (
        BindReceiver,
        BindTransceiver,
        BindTransmitter,
        CommandId,
        DataSm,
        DeliverSm,
        EnquireLink,
        GenericNack,
        Pdu,
        SubmitSmResp,
        Tag,
        Unbind,
    )

# -- the input format -----------------------------------------------------------------------------------------
# byte 0: target, % 4: 0 = the codec alone (the rest is one frame), 1/2/3 = a session bound as TRX/TX/RX.
# Then steps until the input ends, each an op byte (% 8) and its arguments:
#   0-2 Feed: length (2 octets), that many octets, a cut count (% 4) and one octet per cut
#   3 Tick: index into TICKS   4 Submit   5 Answer: pick, shape (% 5)   6 Fill: n (3 octets), octet   7 StartUnbind

MODES = (BindTransceiver, BindTransmitter, BindReceiver)
TICKS = (0.1, 1.0, 4.9, 5.0, 10.0, 29.5, 30.0, 61.0)
SHAPES = ("ok", "error", "nack", "wrong", "ok")
MAX_STEPS = 64  # keeps one input well under a millisecond or so; long runs come from many inputs


class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def int(self, n: int) -> int:
        return int.from_bytes(self.take(n).ljust(n, b"\x00"), "big")


def parse(data: bytes) -> tuple[int, list[Step]]:
    """The target (0 = codec) and the steps an input stands for."""
    cur = _Cursor(data)
    target = cur.int(1) % 4
    steps: list[Step] = []
    while target and cur.left and len(steps) < MAX_STEPS:
        op = cur.int(1) % 8
        if op <= 2:
            chunk = cur.take(cur.int(2))
            cuts = tuple(cur.int(1) for _ in range(cur.int(1) % 4))
            steps.append(Feed(chunk, cuts))
        elif op == 3:
            steps.append(Tick(TICKS[cur.int(1) % len(TICKS)]))
        elif op == 4:
            steps.append(Submit())
        elif op == 5:
            steps.append(Answer(cur.int(1), SHAPES[cur.int(1) % len(SHAPES)]))
        elif op == 6:
            steps.append(Fill(max(1, cur.int(3) % (codec.MAX_PDU_LENGTH + 1)), cur.int(1)))
        else:
            steps.append(StartUnbind())
    return target, steps


def unparse(target: int, steps: list[Step] | None = None, frame: bytes = b"") -> bytes:
    """The input for a target and steps (or, for target 0, one frame): `parse` inverted, to write seeds."""
    out = bytearray([target])
    if target == 0:
        return bytes(out + frame)
    for step in steps or []:
        if isinstance(step, Feed):
            out += bytes([0]) + len(step.data).to_bytes(2, "big") + step.data + bytes([len(step.cuts), *step.cuts])
        elif isinstance(step, Tick):
            out += bytes([3, TICKS.index(step.dt)])
        elif isinstance(step, Submit):
            out += bytes([4])
        elif isinstance(step, Answer):
            out += bytes([5, step.pick, SHAPES.index(step.shape)])
        elif isinstance(step, Fill):
            out += bytes([6]) + step.n.to_bytes(3, "big") + bytes([step.octet])
        else:
            out += bytes([7])
    return bytes(out)


# -- the properties ---------------------------------------------------------------------------------------------


def check_codec(frame: bytes) -> None:
    """`decode` gives a PDU or a PduDecodeError (fatal only for a broken header); the framer cuts a prefix of
    whole frames, keeps the rest below the cap, or fails with its buffer dropped."""
    try:
        pdu = codec.decode(frame)
    except codec.PduDecodeError as exc:
        broken_header = len(frame) < 16 or int.from_bytes(frame[:4], "big") != len(frame)
        assert exc.fatal == broken_header, (exc, exc.fatal)
        assert 0 < exc.status <= 0xFFFFFFFF
    else:
        assert isinstance(pdu, Pdu)
        assert pdu.sequence_number == int.from_bytes(frame[12:16], "big")
        assert pdu.command_status == int.from_bytes(frame[8:12], "big")
    framer = codec.Framer()
    try:
        frames = framer.feed(frame)
    except codec.PduDecodeError as exc:
        assert exc.fatal and framer.failed and framer.buffered == 0
        return
    cut = sum(len(f) for f in frames)
    assert b"".join(frames) == frame[:cut]
    if framer.failed:
        assert framer.buffered == 0
    else:
        assert framer.buffered == len(frame) - cut <= BUFFER_CAP


def test_one_input(data: bytes) -> None:
    global _runs, _crashes
    if _deadline is not None and time.monotonic() >= _deadline:
        # The time budget is ours: libFuzzer's own -max_total_time exit skips atexit, so no figures would print.
        _report()
        for path in _temporary:
            shutil.rmtree(path, ignore_errors=True)
        os._exit(0)
    _runs += 1
    try:
        target, steps = parse(data)
        if target == 0:
            check_codec(data[1:])
        else:
            SessionDriver(MODES[target - 1]).run(steps)
    except BaseException:
        _crashes += 1
        _report()  # libFuzzer exits right after a crash: say so now
        raise


# -- seeds and figures ---------------------------------------------------------------------------------------------


def seeds() -> list[bytes]:
    """Well-formed traffic and a few known-bad shapes, so the fuzzer mutates real PDUs from its first run."""
    enquire = codec.encode(EnquireLink(sequence_number=7))
    deliver = codec.encode(DeliverSm(sequence_number=8, source_addr="15551234567", destination_addr="12345",
                                     short_message=b"STOP", tlvs={0x001E: b"abc\x00", 0x0427: b"\x02"}))
    data_sm = codec.encode(DataSm(sequence_number=9, source_addr="15551234567", tlvs={0x0424: b"hello"}))
    header = codec.HEADER.pack
    return [
        unparse(0, frame=deliver),
        unparse(0, frame=data_sm),
        unparse(0, frame=codec.encode(SubmitSmResp(sequence_number=2, message_id="abc"))),
        unparse(0, frame=header(16, CommandId.ALERT_NOTIFICATION, 0, 1)),
        unparse(1, [Feed(enquire + deliver + data_sm, (3, 20))]),
        unparse(2, [Submit(), Answer(0, "ok"), Submit(), Tick(5.0), Answer(0, "nack"), Tick(10.0)]),
        unparse(3, [Tick(30.0), Answer(0, "ok"), Tick(30.0), Tick(5.0)]),
        unparse(1, [Feed(header(codec.MAX_PDU_LENGTH, CommandId.DELIVER_SM, 0, 5)), Fill(codec.MAX_PDU_LENGTH - 17),
                    Fill(1), Feed(enquire)]),
        unparse(1, [Submit(), StartUnbind(), Feed(deliver), Answer(0, "ok")]),
        unparse(1, [Feed(codec.encode(Unbind(sequence_number=3)) + b"\xff\xff\xff\xff")]),
        unparse(1, [Feed(header(16, 0x00010200, 0, 4) + header(16, 0x80000000 | 0x00010200, 0, 4)),
                    Feed(codec.encode(GenericNack(sequence_number=99, command_status=3)))]),
    ]


def dictionary() -> bytes:
    """libFuzzer tokens: every command id and TLV tag as on the wire, and the command_length edges."""
    words = [c.to_bytes(4, "big") for c in CommandId] + [t.to_bytes(2, "big") for t in Tag]
    words += [n.to_bytes(4, "big") for n in (0, 15, 16, codec.MAX_PDU_LENGTH, codec.MAX_PDU_LENGTH + 1, 0xFFFFFFFF)]
    return b"".join(b'"' + "".join(f"\\x{b:02X}" for b in w).encode() + b'"\n' for w in words)


_runs = 0
_crashes = 0
_started = time.monotonic()
_deadline: float | None = None
_temporary: list[Path] = []  # removed at the end
_corpus = ""
_reported = False


def _report() -> None:
    global _reported
    if _reported:
        return
    _reported = True
    elapsed = time.monotonic() - _started
    figures = {
        "runs": _runs,
        "execs_per_s": round(_runs / elapsed, 1) if elapsed > 0 else None,
        "crashes": _crashes,
        "elapsed_s": round(elapsed, 1),
        "corpus": _corpus,
    }
    print(json.dumps(figures), flush=True)


def main() -> None:
    global _corpus, _deadline
    argv = []
    for arg in sys.argv:
        if arg.startswith("-max_total_time="):
            _deadline = _started + float(arg.split("=", 1)[1])
        else:
            argv.append(arg)
    paths = [a for a in argv[1:] if not a.startswith("-")]
    if not paths:  # no corpus and no input to replay: a fresh corpus seeded with real traffic, and a dictionary
        work = Path(tempfile.mkdtemp(prefix="smpp-fuzz-"))
        _temporary.append(work)
        atexit.register(shutil.rmtree, work, True)  # runs after _report (atexit is last in, first out)
        corpus = work / "corpus"
        corpus.mkdir()
        for i, seed in enumerate(seeds()):
            (corpus / f"seed-{i:02d}").write_bytes(seed)
        argv.append(str(corpus))
        _corpus = "(temporary)"
        if not any(a.startswith("-dict=") for a in argv):
            (work / "smpp.dict").write_bytes(dictionary())
            argv.append(f"-dict={work / 'smpp.dict'}")
    else:
        _corpus = paths[0] if os.path.isdir(paths[0]) else ""
    if not any(a.startswith("-timeout=") for a in argv):
        argv.append("-timeout=10")  # an input that takes seconds is a finding (a quadratic decode was one)
    atexit.register(_report)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
