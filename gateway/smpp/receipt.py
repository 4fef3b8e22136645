"""Delivery receipts: parse the SMPP 3.4 Appendix B text and receipt TLVs, correlate message ids.

The text form is vendor-specific; the parser finds each key on its own (case-insensitively, in any
order, any missing) rather than matching one fixed pattern, and the ``receipted_message_id`` and
``message_state`` TLVs win over the text when present (smpp-reference §6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

__all__ = [
    "FINAL_STATS",
    "MESSAGE_STATES",
    "STAT_TO_STATE",
    "Receipt",
    "ReceiptParseError",
    "format_receipt_text",
    "msgid_key",
    "parse_receipt",
]

# message_state TLV (spec §5.2.28) -> the 7-character stat of the text form.
MESSAGE_STATES: Final[dict[int, str]] = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}
STAT_TO_STATE: Final[dict[str, int]] = {stat: state for state, stat in MESSAGE_STATES.items()}

# ACCEPTD is final in the spec, but Kannel (and carriers in practice) send it while the message
# is still buffered: treat it as not final so a later DELIVRD/UNDELIV is still awaited.
FINAL_STATS: Final = frozenset({"DELIVRD", "EXPIRED", "DELETED", "UNDELIV", "UNKNOWN", "REJECTD"})

_OUTBOUND_STATUS: Final[dict[str, str]] = {
    "DELIVRD": "delivered",
    "EXPIRED": "expired",
    "UNDELIV": "undeliverable",
    "DELETED": "undeliverable",
    "REJECTD": "undeliverable",
    "UNKNOWN": "undeliverable",
}

# Spelled-out states some SMSCs write instead of the 7-character abbreviations.
_STAT_ALIASES: Final[dict[str, str]] = {
    "DELIVERED": "DELIVRD",
    "UNDELIVERABLE": "UNDELIV",
    "ACCEPTED": "ACCEPTD",
    "REJECTED": "REJECTD",
}

# Keys as they appear in the text; "submit date"/"submitdate"/"submit_date" all match.
_KEYS: Final[dict[str, str]] = {
    "id": r"id",
    "sub": r"sub",
    "dlvrd": r"dlvrd",
    "submit_date": r"submit[ _]?date",
    "done_date": r"done[ _]?date",
    "stat": r"stat",
    "err": r"err",
}
_ANY_KEY: Final = "|".join([*_KEYS.values(), "text"])
# A value either follows the colon directly, or after blanks when it is not itself the next
# "key:" (so "err: stat:DELIVRD" leaves err empty instead of reading "stat:DELIVRD" as err).
_KEY_RES: Final[dict[str, re.Pattern[str]]] = {
    name: re.compile(
        rf"(?<![A-Za-z0-9_]){pattern}\s*:(?:(\S+)|[ \t]+(?!(?:{_ANY_KEY})\s*:)(\S+))?",
        re.IGNORECASE,
    )
    for name, pattern in _KEYS.items()
}
_TEXT_RE: Final = re.compile(r"(?<![A-Za-z0-9_])text\s*:", re.IGNORECASE)
_DIGITS_RE: Final = re.compile(r"[0-9]+")


class ReceiptParseError(ValueError):
    """A delivery receipt lacks a message id or a state, so it cannot be applied."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """One parsed delivery receipt.

    ``stat`` is upper-case, normally one of the 7-character states; ``message_state`` is the TLV
    value, or the number for ``stat`` when the TLV was absent (None if ``stat`` is not one of the
    eight SMPP 3.4 states). Dates are naive: the SMSC's clock, time zone unknown.
    """

    message_id: str
    stat: str
    message_state: int | None
    err: str | None
    submitted: int | None
    delivered: int | None
    submit_date: datetime | None
    done_date: datetime | None
    text: str | None

    @property
    def final(self) -> bool:
        """True when no further receipt is expected (ENROUTE, ACCEPTD and unknown stats are not final)."""
        return self.stat in FINAL_STATS

    @property
    def outbound_status(self) -> str | None:
        """The outbound_message status this receipt leads to, or None when it is not final."""
        return _OUTBOUND_STATUS.get(self.stat)


def _decode_text(data: bytes) -> str:
    # Some SMSCs send the receipt text in UCS-2 when the original message was UCS-2: the ASCII keys
    # in UTF-16BE put a NUL in every even position (only the free text may hold other characters).
    if len(data) >= 4 and len(data) % 2 == 0 and data[0] == 0 and data[1] != 0:
        high = data[0::2]
        if high.count(0) * 2 >= len(high):
            return data.decode("utf-16-be", "replace").rstrip("\x00")
    # Latin-1 maps every octet, so nothing here can raise; NUL padding is dropped.
    return data.decode("latin-1").rstrip("\x00")


def _field(head: str, name: str) -> str | None:
    match = _KEY_RES[name].search(head)
    if match is None:
        return None
    value = match.group(1) or match.group(2)
    return value or None


def _parse_int(value: str | None) -> int | None:
    if value is None or _DIGITS_RE.fullmatch(value) is None:
        return None
    return int(value)


def _parse_date(value: str | None) -> datetime | None:
    # YYMMDDhhmm (spec), YYMMDDhhmmss (with seconds) or YYYYMMDDhhmmss; zeros mean "not set".
    if value is None or _DIGITS_RE.fullmatch(value) is None or not value.strip("0"):
        return None
    if len(value) == 14:
        year, rest = int(value[:4]), value[4:]
    elif len(value) in (10, 12):
        # YY is always 20YY: strptime's %y would put 69-99 in the 1900s.
        year, rest = 2000 + int(value[:2]), value[2:]
    else:
        return None
    try:
        return datetime(year, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8]), int(rest[8:10] or 0))
    except ValueError:
        return None  # month 13 and the like: a bad date must not lose the receipt


def _normalise_stat(value: str) -> str:
    stat = value.upper()
    return _STAT_ALIASES.get(stat, stat)


def parse_receipt(
    short_message: bytes,
    receipted_message_id: str | None = None,
    message_state: int | None = None,
) -> Receipt:
    """Parse a delivery receipt from its short_message text and optional receipt TLVs.

    ``receipted_message_id`` and ``message_state`` (the TLVs) take precedence over the text's
    ``id:`` and ``stat:``. Text keys are matched case-insensitively and independently, so
    reordered, missing or respelled fields are fine; everything after ``text:`` is free text.

    Raises:
        ReceiptParseError: neither the TLV nor the text gives a message id, or neither gives a
            state (including a message_state TLV outside 1-8 with no ``stat:`` in the text).
    """
    decoded = _decode_text(short_message)
    text_match = _TEXT_RE.search(decoded)
    if text_match is None:
        head, text = decoded, None
    else:
        head, text = decoded[: text_match.start()], decoded[text_match.end() :]

    tlv_id = receipted_message_id.strip().strip("\x00").strip() if receipted_message_id else ""
    message_id = tlv_id or _field(head, "id")
    if not message_id:
        raise ReceiptParseError(
            f"delivery receipt has no message id (no receipted_message_id TLV, no id: in {decoded[:160]!r})"
        )

    text_stat = _field(head, "stat")
    stat: str | None
    if message_state in MESSAGE_STATES:
        stat = MESSAGE_STATES[message_state]
    elif text_stat is not None:
        stat = _normalise_stat(text_stat)
    else:
        stat = None
    if stat is None:
        detail = (
            f"message_state TLV {message_state} is not an SMPP 3.4 state"
            if message_state is not None
            else "no message_state TLV"
        )
        raise ReceiptParseError(
            f"delivery receipt for {message_id!r} has no state ({detail}, no stat: in {decoded[:160]!r})"
        )
    if message_state is None:
        message_state = STAT_TO_STATE.get(stat)

    return Receipt(
        message_id=message_id,
        stat=stat,
        message_state=message_state,
        err=_field(head, "err"),
        submitted=_parse_int(_field(head, "sub")),
        delivered=_parse_int(_field(head, "dlvrd")),
        submit_date=_parse_date(_field(head, "submit_date")),
        done_date=_parse_date(_field(head, "done_date")),
        text=text,
    )


def msgid_key(message_id: str, fmt: str) -> str:
    """Return the key that correlates a submit_sm_resp message id with a receipt's id.

    ``fmt`` says how this side writes its ids: ``'string'`` keeps the stripped id; ``'decimal'``
    gives ``str(int(id, 10))`` (zero padding vanishes); ``'hex'`` gives ``str(int(id, 16))``, so
    hex ``04000000086ECD50`` and decimal ``288230376293190992`` meet on the same key. An id that is
    not a plain number in that base (no sign, prefix, underscore or inner blank) falls back to the
    stripped string.

    Raises:
        ValueError: ``fmt`` is not one of 'string', 'decimal', 'hex' (a configuration error).
    """
    raw = message_id.strip()
    if fmt == "string":
        return raw
    if fmt == "decimal":
        # int() alone would also accept "+1", "1_0" and non-ASCII digits: insist on ASCII digits.
        return str(int(raw, 10)) if raw.isascii() and raw.isdigit() else raw
    if fmt == "hex":
        if raw and raw.isascii() and all(char in "0123456789abcdefABCDEF" for char in raw):
            return str(int(raw, 16))
        return raw
    raise ValueError(f"unknown message id format {fmt!r}: expected 'string', 'decimal' or 'hex'")


def _format_date(value: datetime | None) -> str:
    return value.strftime("%y%m%d%H%M") if value is not None else "0000000000"


def format_receipt_text(
    message_id: str,
    stat: str,
    *,
    submit_date: datetime | None,
    done_date: datetime | None,
    submitted: int = 1,
    delivered: int | None = None,
    err: int | str = 0,
    text: str = "",
) -> bytes:
    """Build the standard receipt text (spec Appendix B), as our SMSC simulator sends it.

    ``id:X sub:001 dlvrd:001 submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DELIVRD err:000
    text:...`` with the first 20 characters of ``text``. ``delivered`` defaults to ``submitted``
    for DELIVRD and 0 otherwise; a missing date is written as zeros; an int ``err`` is written as
    3 digits. Characters outside Latin-1 in ``text`` become '?'.

    Raises:
        ValueError: ``message_id``, ``stat`` or ``err`` is empty or contains whitespace or a colon
            (it would not parse back), or a count is outside 0-999.
    """
    err_text = f"{err:03d}" if isinstance(err, int) else err
    for name, value in (("message_id", message_id), ("stat", stat), ("err", err_text)):
        if not value or any(char.isspace() for char in value) or ":" in value:
            raise ValueError(f"receipt {name} {value!r} must be non-empty, without blanks or colons")
    if delivered is None:
        delivered = submitted if stat.upper() == "DELIVRD" else 0
    for name, count in (("submitted", submitted), ("delivered", delivered)):
        if not 0 <= count <= 999:
            raise ValueError(f"receipt {name} count {count} is outside 0-999")
    line = (
        f"id:{message_id} sub:{submitted:03d} dlvrd:{delivered:03d}"
        f" submit date:{_format_date(submit_date)} done date:{_format_date(done_date)}"
        f" stat:{stat} err:{err_text} text:{text[:20]}"
    )
    return line.encode("latin-1", "replace")
