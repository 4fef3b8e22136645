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

from gateway.clean import clean_text

__all__ = [
    "FINAL_STATS",
    "ID_MAPPINGS",
    "INTERMEDIATE_STATS",
    "MESSAGE_STATES",
    "STAT_LABELS",
    "STAT_TO_STATE",
    "Receipt",
    "ReceiptParseError",
    "canonical_msgid",
    "error_code",
    "format_receipt_text",
    "msgid_key",
    "parse_receipt",
    "receipt_keys",
    "stat_label",
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

# SMPP 5.0 adds these two message_state values; outside 0-9 a value is vendor-specific.
_SMPP50_STATES: Final[dict[int, str]] = {0: "SCHEDULED", 9: "SKIPPED"}

# The final stats of SMPP 3.4. Any other stat that is not intermediate (below) is final too: vendor words
# such as FAILED or ERROR end the row 'undeliverable' with the stat in its reason, rather than leaving it
# 'submitted' until the receipt timeout.
FINAL_STATS: Final = frozenset({"DELIVRD", "EXPIRED", "DELETED", "UNDELIV", "UNKNOWN", "REJECTD"})
# Not final: a later receipt is still expected. ACCEPTD is final in the spec, but Kannel (and carriers in
# practice) send it while the message is still buffered, so a later DELIVRD/UNDELIV is still awaited.
INTERMEDIATE_STATS: Final = frozenset({"ENROUTE", "ACCEPTD", "SCHEDULED", "BUFFRED", "PENDING"})
# Metric label values: SMSC-supplied stats map to this fixed set plus "other" (bounded label cardinality).
STAT_LABELS: Final = frozenset({*FINAL_STATS, *INTERMEDIATE_STATS, "SKIPPED"})

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
    "UNDELIVERED": "UNDELIV",
    "ACCEPTED": "ACCEPTD",
    "REJECTED": "REJECTD",
    "EN_ROUTE": "ENROUTE",
    "BUFFERED": "BUFFRED",
    "SCHEDLD": "SCHEDULED",
}
# Longest id / stat / err kept: SMPP ids are at most 65 octets; a longer token is garbage, and a
# multi-kilobyte one would not fit a btree index entry.
_MAX_ID: Final = 128
_MAX_WORD: Final = 64
# err: codes up to 32-bit unsigned fit the bigint error_code column; larger ones stay only in `reason`.
_MAX_ERROR_CODE: Final = 0xFFFFFFFF

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
_HEX_RE: Final = re.compile(r"[0-9A-Fa-f]+")


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
        """True when no further receipt is expected: every stat but the intermediate ones (ENROUTE, ACCEPTD...)."""
        return self.stat not in INTERMEDIATE_STATS

    @property
    def outbound_status(self) -> str | None:
        """The outbound_message status this receipt leads to, or None when it is not final.

        A final stat that is not one of the SMPP states (``FAILED``, ``ERROR``, a vendor message_state)
        leads to 'undeliverable': the message did not arrive as far as anyone can tell, and the stat
        goes to ``reason`` for people to read.
        """
        if self.stat in INTERMEDIATE_STATS:
            return None
        return _OUTBOUND_STATUS.get(self.stat, "undeliverable")


def _decode_text(data: bytes) -> str:
    # Some SMSCs send the receipt text in UCS-2 when the original message was UCS-2: the ASCII keys
    # in UTF-16BE put a NUL in every even position (only the free text may hold other characters).
    if len(data) >= 4 and len(data) % 2 == 0 and data[0] == 0 and data[1] != 0:
        high = data[0::2]
        if high.count(0) * 2 >= len(high):
            return clean_text(data.decode("utf-16-be", "replace").rstrip("\x00"))
    # Latin-1 maps every octet, so nothing here can raise; NUL padding is dropped.
    return clean_text(data.decode("latin-1").rstrip("\x00"))


def _is_ascii_digits(value: str) -> bool:
    # str.isdigit() is also true for '²' and '١', which int() then refuses or reads as another number.
    return value.isascii() and value.isdigit()


def _is_ascii_hex(value: str) -> bool:
    # A compiled ASCII class, not a per-character loop: this runs for every submit_sm_resp and receipt.
    return _HEX_RE.fullmatch(value) is not None


def _field(head: str, name: str) -> str | None:
    match = _KEY_RES[name].search(head)
    if match is None:
        return None
    value = match.group(1) or match.group(2)
    return value or None


def _parse_int(value: str | None) -> int | None:
    # _DIGITS_RE is ASCII-only; the length cap keeps int() away from its 4300-digit limit.
    if value is None or len(value) > 18 or _DIGITS_RE.fullmatch(value) is None:
        return None
    return int(value)


def error_code(err: str | None) -> int | None:
    """The ``err:`` value as a number for the bigint error_code column, or None.

    Only ASCII digits count (``err:²`` is not a code) and only values up to 32-bit unsigned (what SMPP
    error fields hold); anything else is None and stays readable in the row's ``reason``.
    """
    if err is None or not _is_ascii_digits(err) or len(err) > 20:
        return None
    value = int(err)
    return value if value <= _MAX_ERROR_CODE else None


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
    stat = value.upper()[:_MAX_WORD]
    return _STAT_ALIASES.get(stat, stat)


def stat_label(stat: str) -> str:
    """The metric label for a receipt stat: one of `STAT_LABELS`, else ``other`` (SMSC words are unbounded)."""
    return stat if stat in STAT_LABELS else "other"


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
    fields, text = _standard_fields(decoded) or _tolerant_fields(decoded)

    tlv_id = clean_text(receipted_message_id.strip().strip("\x00").strip()) if receipted_message_id else ""
    message_id = (tlv_id or fields["id"] or "")[:_MAX_ID]
    if not message_id:
        raise ReceiptParseError(
            f"delivery receipt has no message id (no receipted_message_id TLV, no id: in {decoded[:160]!r})"
        )

    # A message_state TLV of SMPP 3.4 (1-8) wins over the text. Outside 1-8 the text's stat: is the better
    # witness; without one, 0 and 9 take their SMPP 5.0 names (SCHEDULED is intermediate, SKIPPED final)
    # and a vendor value becomes STATE_<n>, a final stat like any unknown word: undeliverable, with reason.
    text_stat = fields["stat"]
    stat: str
    if message_state in MESSAGE_STATES:
        stat = MESSAGE_STATES[message_state]
    elif text_stat is not None:
        stat = _normalise_stat(text_stat)
    elif message_state is not None:
        # message_state is an Int1: a longer TLV is garbage, and its number could be thousands of digits long.
        stat = _SMPP50_STATES.get(message_state, f"STATE_{message_state}" if message_state <= 0xFF else "STATE_INVALID")
    else:
        raise ReceiptParseError(
            f"delivery receipt for {message_id!r} has no state (no message_state TLV, no stat: in {decoded[:160]!r})"
        )
    if message_state is None:
        message_state = STAT_TO_STATE.get(stat)
    err = fields["err"]

    return Receipt(
        message_id=message_id,
        stat=stat,
        message_state=message_state,
        err=err[:_MAX_WORD] if err is not None else None,
        submitted=_parse_int(fields["sub"]),
        delivered=_parse_int(fields["dlvrd"]),
        submit_date=_parse_date(fields["submit_date"]),
        done_date=_parse_date(fields["done_date"]),
        text=text,
    )


# The Appendix B layout as most SMSCs write it, matched by one expression instead of a search per key (receipt
# parsing is on the hot path). Values hold no blank and no colon, so no key can hide inside another's value and
# the result is the one `_tolerant_fields` gives (a property test checks it); anything else takes that path.
_STANDARD_RE: Final = re.compile(
    r"id:([^\s:]+) sub:([0-9]{3}) dlvrd:([0-9]{3}) submit date:([0-9]{10}|[0-9]{12})"
    r" done date:([0-9]{10}|[0-9]{12}) stat:([^\s:]+) err:([^\s:]+) text:(.*)",
    re.DOTALL,
)
_FIELD_NAMES: Final = ("id", "sub", "dlvrd", "submit_date", "done_date", "stat", "err")


def _standard_fields(decoded: str) -> tuple[dict[str, str | None], str | None] | None:
    match = _STANDARD_RE.fullmatch(decoded)
    if match is None:
        return None
    *values, text = match.groups()
    return dict(zip(_FIELD_NAMES, values, strict=True)), text


def _tolerant_fields(decoded: str) -> tuple[dict[str, str | None], str | None]:
    """Each key found on its own, in any order and spelling, any of them missing; the free text after `text:`."""
    text_match = _TEXT_RE.search(decoded)
    if text_match is None:
        head, text = decoded, None
    else:
        head, text = decoded[: text_match.start()], decoded[text_match.end() :]
    return {name: _field(head, name) for name in _FIELD_NAMES}, text


# Longest id read as a number: 32 hex digits is 128 bits, more than any SMSC counter; it also keeps
# int() far from its 4300-digit limit (which raises ValueError).
_MAX_NUMERIC_ID: Final = 32

# Which receipt candidate key matched (index into `receipt_keys`), named for the metric and the log.
ID_MAPPINGS: Final = ("exact", "hex_to_decimal", "decimal_to_hex")


def canonical_msgid(message_id: str) -> str:
    """The key stored for an id in ``auto`` mode: the id as written, stripped, in one spelling.

    An id made only of hex digits (decimal ids included) is upper-cased and loses its leading zeros,
    so ``00ab12``, ``AB12`` and ``ab12`` meet, and so do ``0000012345`` and ``12345`` (zero-padded
    decimal receipts, jsmpp #178). The trade-off: an SMSC whose opaque ids differ only in case or in
    leading zeros would see two of its ids share a key; real ids are counters or hashes, and receipts
    match only messages submitted within the receipt timeout, so that risk is accepted. Other ids
    (with ``-``, letters past F...) are kept exactly as written.
    """
    raw = message_id.strip().replace("\x00", "")
    if _is_ascii_hex(raw):
        return raw.lstrip("0").upper() or "0"
    return raw


def receipt_keys(message_id: str, fmt: str) -> tuple[str, str | None, str | None]:
    """The keys under which a receipt's id may have been stored at submit_sm_resp, best first.

    In ``auto`` mode: (the id as written, canonical; if it is all decimal digits, the hex spelling of
    that number; if it is all hex digits, its decimal value), each in `canonical_msgid` form, None
    where not applicable or equal to an earlier key. Index i of the key that matched is the mapping
    ``ID_MAPPINGS[i]``: 1 = the SMSC writes hex in submit_sm_resp and decimal in receipts, 2 = the
    reverse. With an explicit format there is one key, `msgid_key` (today's behaviour).

    Raises:
        ValueError: ``fmt`` is not 'auto', 'string', 'decimal' or 'hex'.
    """
    if fmt != "auto":
        return msgid_key(message_id, fmt), None, None
    exact = canonical_msgid(message_id)
    if len(exact) > _MAX_NUMERIC_ID:
        return exact, None, None
    as_hex = f"{int(exact, 10):X}" if _is_ascii_digits(exact) else None
    as_decimal = str(int(exact, 16)) if _is_ascii_hex(exact) else None
    if as_hex == exact:
        as_hex = None
    if as_decimal in (exact, as_hex):
        as_decimal = None
    return exact, as_hex, as_decimal


def msgid_key(message_id: str, fmt: str) -> str:
    """Return the key that correlates a submit_sm_resp message id with a receipt's id.

    ``fmt`` says how this side writes its ids: ``'auto'`` (the default) gives `canonical_msgid`, and
    receipts try the other base through `receipt_keys`; ``'string'`` keeps the stripped id;
    ``'decimal'`` gives ``str(int(id, 10))`` (zero padding vanishes); ``'hex'`` gives
    ``str(int(id, 16))``, so hex ``04000000086ECD50`` and decimal ``288230376293190992`` meet on the
    same key. An id that is not a plain number in that base (no sign, prefix, underscore or inner
    blank, at most 32 digits) falls back to the stripped string.

    Raises:
        ValueError: ``fmt`` is not one of 'auto', 'string', 'decimal', 'hex' (a configuration error).
    """
    if fmt == "auto":
        return canonical_msgid(message_id)
    raw = message_id.strip()
    if fmt == "string":
        return raw
    if fmt == "decimal":
        # int() alone would also accept "+1", "1_0" and non-ASCII digits: insist on ASCII digits.
        return str(int(raw, 10)) if _is_ascii_digits(raw) and len(raw) <= _MAX_NUMERIC_ID else raw
    if fmt == "hex":
        return str(int(raw, 16)) if _is_ascii_hex(raw) and len(raw) <= _MAX_NUMERIC_ID else raw
    raise ValueError(f"unknown message id format {fmt!r}: expected 'auto', 'string', 'decimal' or 'hex'")


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
