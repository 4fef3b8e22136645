"""Per-message CPU of each pure stage of the outbound path, in microseconds (no I/O, no event loop).

The end-to-end benchmark (bench/outbound.py) shows where a message's time goes only through a profiler on a
noisy machine; this one times each stage alone, many times, and takes the best of several repeats, so two
builds can be compared stage by stage. Every message has its own number (as in a real campaign), so caches
keyed by the number do not flatter the figures.

    .venv/bin/python bench/hotpath.py            # 20,000 messages per stage, best of 5
    .venv/bin/python bench/hotpath.py --messages 50000 --repeat 7

The last line is one JSON object: {"stage": microseconds per message, ..., "total_us": ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from gateway.message import ClaimedMessage, normalise_number, prepare
from gateway.router import Router
from gateway.settings import load_settings
from gateway.smpp.codec import Framer, decode, encode
from gateway.smpp.pdu import DeliverSm, DeliverSmResp, SubmitSm, SubmitSmResp
from gateway.smpp.receipt import format_receipt_text, parse_receipt
from gateway.smpp.session import Session, State

BODY = "Your verification code is 123456. Reply STOP to opt out."


def numbers(n: int) -> list[str]:
    return [f"+1202{5550000 + i:07d}" for i in range(n)]


def best_of(repeat: int, n: int, setup: Callable[[], Callable[[], None]]) -> float:
    """Microseconds per message: the best of `repeat` runs of the stage over `n` messages."""
    best = float("inf")
    for _ in range(repeat):
        run = setup()
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return best / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n, repeat = args.messages, args.repeat
    settings = load_settings(None, smsc={"a": {"system_id": "x", "password": "p"}})
    smsc = settings.smsc["a"]
    d = settings.dispatcher
    now = datetime.now(UTC)
    records = [
        {"id": i, "source": "12345", "destination": dest, "body": BODY, "priority": 0,
         "message_class": "transactional", "expires_at": None, "attempts": 1, "created_at": now}
        for i, dest in enumerate(numbers(n), 1)
    ]
    figures: dict[str, float] = {}

    def row_model() -> Callable[[], None]:
        return lambda: [ClaimedMessage.model_validate(r) for r in records] and None

    figures["row_model"] = best_of(repeat, n, row_model)
    msgs = [ClaimedMessage.model_validate(r) for r in records]

    def normalise() -> Callable[[], None]:
        normalise_number.cache_clear()
        return lambda: [normalise_number(m.destination, d.default_region) for m in msgs] and None

    figures["normalise_number"] = best_of(repeat, n, normalise)

    class _Disp:  # the router only asks a dispatcher its name and whether it is up
        def __init__(self, name: str) -> None:
            self.name, self.is_up = name, True
            self.wake_router: Callable[[], None] | None = None

    router = Router([_Disp("a")], [], d, None, None)  # type: ignore[list-item, arg-type]

    def route() -> Callable[[], None]:
        normalise_number.cache_clear()
        return lambda: [router.pick(m.source, m.destination, m.message_class) for m in msgs] and None

    figures["route_pick"] = best_of(repeat, n, route)

    def prepare_all() -> Callable[[], None]:
        normalise_number.cache_clear()
        return lambda: [prepare(m, smsc, d.default_region, now, d.max_segments) for m in msgs] and None

    figures["prepare"] = best_of(repeat, n, prepare_all)
    pdus = [prepare(m, smsc, d.default_region, now, d.max_segments)[0] for m in msgs]  # type: ignore[index]
    assert all(isinstance(p, SubmitSm) for p in pdus)

    def send() -> Callable[[], None]:
        session = Session(window=n + 10)
        session.state = State.BOUND_TRX  # as after a bind_resp: the send path alone

        def run() -> None:
            for p in pdus:
                session.send_request(p, 0.0)
            session.data_to_send()
        return run

    figures["send_request_encode"] = best_of(repeat, n, send)
    resp_stream = b"".join(encode(SubmitSmResp(sequence_number=i, message_id=str(0x2A000000 + i)))
                           for i in range(1, n + 1))
    receipts = b"".join(
        encode(DeliverSm(sequence_number=i, source_addr=msgs[i - 1].destination[1:], destination_addr="12345",
                         esm_class=0x04, short_message=format_receipt_text(
                             str(0x2A000000 + i), "DELIVRD", submit_date=now, done_date=now)))
        for i in range(1, n + 1)
    )

    def frame_decode(stream: bytes) -> Callable[[], Callable[[], None]]:
        def setup() -> Callable[[], None]:
            def run() -> None:
                framer = Framer()
                for frame in framer.feed(stream):
                    decode(frame)
            return run
        return setup

    figures["decode_submit_sm_resp"] = best_of(repeat, n, frame_decode(resp_stream))
    figures["decode_deliver_sm"] = best_of(repeat, n, frame_decode(receipts))
    delivers = [decode(f) for f in Framer().feed(receipts)]

    def parse() -> Callable[[], None]:
        return lambda: [parse_receipt(p.short_message) for p in delivers] and None  # type: ignore[union-attr]

    figures["parse_receipt"] = best_of(repeat, n, parse)

    def ack() -> Callable[[], None]:
        return lambda: [encode(DeliverSmResp(sequence_number=p.sequence_number)) for p in delivers] and None

    figures["encode_deliver_sm_resp"] = best_of(repeat, n, ack)
    total = sum(v for k, v in figures.items() if k != "normalise_number")  # route_pick and prepare include it
    width = max(map(len, figures))
    for name, us in figures.items():
        print(f"{name:<{width}}  {us:7.2f} µs/msg")
    print(f"{'total (stages above, normalise counted in route_pick and prepare)':<{width}}  {total:7.2f} µs/msg")
    print(json.dumps({"benchmark": "hotpath", "messages": n, "repeat": repeat,
                      **{k: round(v, 2) for k, v in figures.items()}, "total_us": round(total, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
