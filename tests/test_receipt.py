"""Delivery receipt parsing, message id correlation and the simulator's receipt text."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.smpp.receipt import (
    ID_MAPPINGS,
    MESSAGE_STATES,
    STAT_LABELS,
    Receipt,
    ReceiptParseError,
    canonical_msgid,
    error_code,
    format_receipt_text,
    msgid_key,
    parse_receipt,
    receipt_keys,
    stat_label,
)

SPEC_EXAMPLE = (
    b"id:0123456789 sub:001 dlvrd:001 submit date:0809011130 done date:0809011131"
    b" stat:DELIVRD err:000 text:Hello world, this is"
)


def test_spec_appendix_b_form() -> None:
    assert parse_receipt(SPEC_EXAMPLE) == Receipt(
        message_id="0123456789",
        stat="DELIVRD",
        message_state=2,
        err="000",
        submitted=1,
        delivered=1,
        submit_date=datetime(2008, 9, 1, 11, 30),
        done_date=datetime(2008, 9, 1, 11, 31),
        text="Hello world, this is",
    )


# Each case: short_message and the fields it must yield (message_id, stat, err, sub, dlvrd, text).
TEXT_CASES: list[tuple[str, bytes, tuple[str, str, str | None, int | None, int | None, str | None]]] = [
    # smpp-reference §6 variant 1: hex and decimal ids are kept raw; msgid_key reconciles them.
    (
        "hex id",
        b"id:04000000086ECD50 sub:001 dlvrd:001 submit date:2501151030 done date:2501151031 stat:DELIVRD err:000 text:",
        ("04000000086ECD50", "DELIVRD", "000", 1, 1, ""),
    ),
    (
        "zero-padded decimal id",
        b"id:0000012345 sub:001 dlvrd:001 submit date:2501151030 done date:2501151031 stat:DELIVRD err:000 text:x",
        ("0000012345", "DELIVRD", "000", 1, 1, "x"),
    ),
    # smpp-reference §6 variant 3: key spelling.
    (
        "capital Text",
        b"id:77 sub:001 dlvrd:001 submit date:2501151030 done date:2501151031 stat:DELIVRD err:000"
        b" Text:Your code is 1234",
        ("77", "DELIVRD", "000", 1, 1, "Your code is 1234"),
    ),
    (
        "submitdate/donedate without the space (OpenMarket)",
        b"id:abc123 sub:001 dlvrd:000 submitdate:2501151030 donedate:2501151035 stat:UNDELIV err:001 text:Hi",
        ("abc123", "UNDELIV", "001", 1, 0, "Hi"),
    ),
    (
        "upper-case keys and lower-case stat",
        b"ID:42 SUB:001 DLVRD:001 SUBMIT DATE:2501151030 DONE DATE:2501151031 STAT:delivrd ERR:000",
        ("42", "DELIVRD", "000", 1, 1, None),
    ),
    # smpp-reference §6 variant 4: missing and reordered fields, odd ids and errs.
    (
        "no text, no err",
        b"id:1 sub:001 dlvrd:001 submit date:2501151030 done date:2501151031 stat:DELIVRD",
        ("1", "DELIVRD", None, 1, 1, None),
    ),
    (
        "sub:000",
        b"id:1 sub:000 dlvrd:000 submit date:2501151030 done date:2501151031 stat:EXPIRED err:000",
        ("1", "EXPIRED", "000", 0, 0, None),
    ),
    (
        "reordered",
        b"stat:REJECTD err:011 id:99 done date:2501151031 dlvrd:000 sub:001 submit date:2501151030",
        ("99", "REJECTD", "011", 1, 0, None),
    ),
    (
        "only id and stat",
        b"id:5 stat:DELIVRD",
        ("5", "DELIVRD", None, None, None, None),
    ),
    (
        "non-numeric id",
        b"id:0118Z-0122I-2309U-57DGB sub:001 dlvrd:001 submit date:2501151030 done date:2501151031"
        b" stat:DELIVRD err:000 text:",
        ("0118Z-0122I-2309U-57DGB", "DELIVRD", "000", 1, 1, ""),
    ),
    (
        "err not 3 digits",
        b"id:5 sub:1 dlvrd:0 submit date:2501151030 done date:2501151031 stat:UNDELIV err:75",
        ("5", "UNDELIV", "75", 1, 0, None),
    ),
    (
        "alphanumeric err",
        b"id:5 stat:UNDELIV err:X0B",
        ("5", "UNDELIV", "X0B", None, None, None),
    ),
    # smpp-reference §6 variant 6: err is carrier-specific and kept as text, never read as command_status.
    (
        "err:075",
        b"id:5 sub:001 dlvrd:000 submit date:2501151030 done date:2501151031 stat:UNDELIV err:075",
        ("5", "UNDELIV", "075", 1, 0, None),
    ),
    # Free text after text: never feeds the other fields.
    (
        "text holding keys",
        b"id:5 sub:001 dlvrd:001 submit date:2501151030 done date:2501151031 stat:DELIVRD err:000"
        b" text:id:6 stat:UNDELIV err:999",
        ("5", "DELIVRD", "000", 1, 1, "id:6 stat:UNDELIV err:999"),
    ),
    (
        "text before other fields",
        b"id:5 text:hello stat:UNDELIV",
        ("5", "", None, None, None, "hello stat:UNDELIV"),
    ),
    # Other tolerated shapes.
    (
        "blank after a colon",
        b"id: 5 sub: 001 dlvrd: 001 stat: DELIVRD err: text:x",
        ("5", "DELIVRD", None, 1, 1, "x"),
    ),
    (
        "empty err before stat",
        b"id:5 err: stat:DELIVRD",
        ("5", "DELIVRD", None, None, None, None),
    ),
    (
        "NUL terminated",
        b"id:5 stat:DELIVRD err:000\x00",
        ("5", "DELIVRD", "000", None, None, None),
    ),
    (
        "spelled-out stat",
        b"id:5 stat:DELIVERED",
        ("5", "DELIVRD", None, None, None, None),
    ),
    (
        "unknown stat kept",
        b"id:5 stat:FAILED err:001",
        ("5", "FAILED", "001", None, None, None),
    ),
    (
        "latin-1 text",
        b"id:5 stat:DELIVRD text:caf\xe9",
        ("5", "DELIVRD", None, None, None, "café"),
    ),
    (
        "UCS-2 receipt text",
        "id:5 sub:001 dlvrd:001 stat:DELIVRD err:000 text:Привет".encode("utf-16-be"),
        ("5", "DELIVRD", "000", 1, 1, "Привет"),
    ),
]


@pytest.mark.parametrize(
    ("short_message", "expected"),
    [(case[1], case[2]) for case in TEXT_CASES if case[0] != "text before other fields"],
    ids=[case[0] for case in TEXT_CASES if case[0] != "text before other fields"],
)
def test_text_variants(
    short_message: bytes,
    expected: tuple[str, str, str | None, int | None, int | None, str | None],
) -> None:
    receipt = parse_receipt(short_message)
    got = (receipt.message_id, receipt.stat, receipt.err, receipt.submitted, receipt.delivered, receipt.text)
    assert got == expected


def test_everything_after_text_is_free_text() -> None:
    # stat: comes after text:, so it is part of the text and the receipt has no state.
    with pytest.raises(ReceiptParseError, match="no state"):
        parse_receipt(b"id:5 text:hello stat:UNDELIV")
    receipt = parse_receipt(b"id:5 text:hello stat:UNDELIV", message_state=2)
    assert receipt.text == "hello stat:UNDELIV"
    assert receipt.stat == "DELIVRD"


# smpp-reference §6 variant 2: dates.
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2501151030", datetime(2025, 1, 15, 10, 30)),
        ("250115103045", datetime(2025, 1, 15, 10, 30, 45)),
        ("20250115103045", datetime(2025, 1, 15, 10, 30, 45)),
        ("6901011200", datetime(2069, 1, 1, 12, 0)),  # YY is 20YY, never 1969
        ("9912312359", datetime(2099, 12, 31, 23, 59)),
        ("0000000000", None),
        ("000000000000", None),
        ("2513151030", None),  # month 13
        ("25011510", None),  # 8 digits
        ("25-01-15", None),
    ],
)
def test_dates(value: str, expected: datetime | None) -> None:
    receipt = parse_receipt(f"id:1 submit date:{value} done date:{value} stat:DELIVRD".encode())
    assert receipt.submit_date == expected
    assert receipt.done_date == expected


def test_missing_dates_are_none() -> None:
    receipt = parse_receipt(b"id:1 stat:DELIVRD")
    assert receipt.submit_date is None
    assert receipt.done_date is None


# smpp-reference §6 variant 5: TLV receipts.
def test_tlvs_win_over_text() -> None:
    receipt = parse_receipt(
        b"id:0000012345 sub:001 dlvrd:000 submit date:2501151030 done date:2501151031 stat:ENROUTE err:000",
        receipted_message_id="3039",
        message_state=2,
    )
    assert receipt.message_id == "3039"
    assert receipt.stat == "DELIVRD"
    assert receipt.message_state == 2
    # the rest still comes from the text
    assert receipt.done_date == datetime(2025, 1, 15, 10, 31)
    assert receipt.err == "000"


def test_tlv_only_receipt() -> None:
    receipt = parse_receipt(b"", receipted_message_id="AB12\x00", message_state=5)
    assert (receipt.message_id, receipt.stat, receipt.message_state) == ("AB12", "UNDELIV", 5)
    assert receipt.text is None and receipt.err is None
    assert receipt.outbound_status == "undeliverable"


def test_tlv_id_with_text_state() -> None:
    receipt = parse_receipt(b"stat:EXPIRED err:000", receipted_message_id="9")
    assert (receipt.message_id, receipt.stat, receipt.message_state) == ("9", "EXPIRED", 3)


def test_blank_tlv_id_falls_back_to_text() -> None:
    assert parse_receipt(b"id:7 stat:DELIVRD", receipted_message_id=" ").message_id == "7"


def test_tlv_state_fills_missing_text_stat() -> None:
    receipt = parse_receipt(b"id:7 err:000", message_state=3)
    assert receipt.stat == "EXPIRED"


def test_state_outside_3_4_uses_the_text() -> None:
    receipt = parse_receipt(b"id:7 stat:DELIVRD", message_state=9)
    assert receipt.stat == "DELIVRD"
    assert receipt.message_state == 9  # the TLV as received


@pytest.mark.parametrize(
    ("state", "stat", "outbound"),
    [
        (0, "SCHEDULED", None),  # SMPP 5.0: not final
        (9, "SKIPPED", "undeliverable"),  # SMPP 5.0: final
        (66, "STATE_66", "undeliverable"),  # vendor value: an unknown final state, like an unknown stat word
        (0x1234, "STATE_INVALID", "undeliverable"),  # longer than the Int1 the spec gives it
        # thousands of digits (str() would raise): never formatted
        pytest.param(256**3000, "STATE_INVALID", "undeliverable", id="huge"),
    ],
)
def test_message_state_outside_3_4_without_text_stat(state: int, stat: str, outbound: str | None) -> None:
    receipt = parse_receipt(b"id:5", message_state=state)
    assert (receipt.stat, receipt.outbound_status) == (stat, outbound)


def test_message_state_derived_from_text() -> None:
    assert parse_receipt(b"id:7 stat:UNDELIV").message_state == 5
    assert parse_receipt(b"id:7 stat:FAILED").message_state is None


@pytest.mark.parametrize(("state", "stat"), sorted(MESSAGE_STATES.items()))
def test_message_state_map(state: int, stat: str) -> None:
    assert parse_receipt(b"", receipted_message_id="1", message_state=state).stat == stat


def test_message_state_map_follows_spec() -> None:
    assert MESSAGE_STATES == {
        1: "ENROUTE",
        2: "DELIVRD",
        3: "EXPIRED",
        4: "DELETED",
        5: "UNDELIV",
        6: "ACCEPTD",
        7: "UNKNOWN",
        8: "REJECTD",
    }


@pytest.mark.parametrize(
    ("short_message", "kwargs", "message"),
    [
        (b"sub:001 dlvrd:001 stat:DELIVRD err:000", {}, "no message id"),
        (b"", {"message_state": 2}, "no message id"),
        (b"id: stat:DELIVRD", {}, "no message id"),
        (b"text:id:5 stat:DELIVRD", {}, "no message id"),
        (b"msgid:5 stat:DELIVRD", {}, "no message id"),
        (b"id:5 sub:001 err:000", {}, "no state"),
        (b"", {"receipted_message_id": "5"}, "no state"),
        (b"\xff\xfe\x00", {}, "no message id"),
    ],
)
def test_unusable_receipts_raise(short_message: bytes, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ReceiptParseError, match=message):
        parse_receipt(short_message, **kwargs)  # type: ignore[arg-type]
    assert issubclass(ReceiptParseError, ValueError)


@pytest.mark.parametrize(
    ("stat", "final", "outbound"),
    [
        ("DELIVRD", True, "delivered"),
        ("EXPIRED", True, "expired"),
        ("UNDELIV", True, "undeliverable"),
        ("DELETED", True, "undeliverable"),
        ("REJECTD", True, "undeliverable"),
        ("UNKNOWN", True, "undeliverable"),
        ("ENROUTE", False, None),
        ("ACCEPTD", False, None),
        ("accepted", False, None),
        ("BUFFERED", False, None),
        ("SCHEDULED", False, None),
        # Unknown final stats (vendor words) end the row undeliverable; the stat goes to its reason.
        ("FAILED", True, "undeliverable"),
        ("ERROR", True, "undeliverable"),
    ],
)
def test_final_and_outbound_status(stat: str, final: bool, outbound: str | None) -> None:
    receipt = parse_receipt(f"id:1 stat:{stat}".encode())
    assert receipt.final is final
    assert receipt.outbound_status == outbound


@given(st.binary(max_size=300), st.one_of(st.none(), st.text(max_size=70)), st.one_of(st.none(), st.integers(0, 255)))
def test_parse_raises_only_receipt_parse_error(data: bytes, rid: str | None, state: int | None) -> None:
    try:
        receipt = parse_receipt(data, rid, state)
    except ReceiptParseError:
        return
    assert receipt.message_id
    assert receipt.stat


@pytest.mark.parametrize(
    ("err", "code"),
    [
        ("000", 0),
        ("075", 75),
        ("4294967295", 0xFFFFFFFF),  # 32-bit unsigned: fits the bigint column
        ("4294967296", None),  # past 32 bits: kept only in reason
        ("99999999999999999999999", None),
        ("²", None),  # str.isdigit() is true, int() raises
        ("١٢", None),  # Arabic-Indic digits: int() would read 12
        ("0x4B", None),
        ("-1", None),
        ("", None),
        (None, None),
    ],
)
def test_error_code_takes_ascii_digits_up_to_32_bits(err: str | None, code: int | None) -> None:
    assert error_code(err) == code


def test_superscript_err_parses() -> None:
    receipt = parse_receipt("id:7 stat:UNDELIV err:²".encode("latin-1"))
    assert (receipt.err, error_code(receipt.err), receipt.outbound_status) == ("²", None, "undeliverable")


def test_nul_inside_the_id_is_replaced() -> None:
    receipt = parse_receipt(b"id:12\x0034 stat:DELIVRD err:000")
    assert receipt.message_id == "12\ufffd34"
    assert "\x00" not in "".join(receipt_keys(receipt.message_id, "auto")[0])


def test_huge_id_and_stat_are_capped() -> None:
    receipt = parse_receipt(b"id:" + b"9" * 10_000 + b" stat:" + b"X" * 10_000)
    assert len(receipt.message_id) <= 128 and len(receipt.stat) <= 64
    assert receipt_keys(receipt.message_id, "auto") == (receipt.message_id, None, None)


@pytest.mark.parametrize(
    ("stat", "label"),
    [("DELIVRD", "DELIVRD"), ("UNDELIV", "UNDELIV"), ("ENROUTE", "ENROUTE"), ("FAILED", "other"),
     ("STATE_66", "other"), ("X" * 64, "other")],
)
def test_stat_label_is_bounded(stat: str, label: str) -> None:
    assert stat_label(stat) == label
    assert stat_label(stat) in STAT_LABELS | {"other"}


# --- message id correlation --------------------------------------------------------------------


# (id as written, canonical key)
CANONICAL_CASES = [
    ("288230376293190992", "288230376293190992"),
    ("0000012345", "12345"),  # zero-padded decimal (jsmpp #178)
    ("04000000086ECD50", "4000000086ECD50"),
    ("04000000086ecd50", "4000000086ECD50"),  # hex case does not matter
    (" 1a2b3c4d ", "1A2B3C4D"),
    ("0", "0"),
    ("000", "0"),
    ("0118Z-0122I-2309U-57DGB", "0118Z-0122I-2309U-57DGB"),  # not a number: as written
    ("abc-01", "abc-01"),
    ("msg\x0042", "msg42"),
    ("", ""),
]


@pytest.mark.parametrize(("message_id", "key"), CANONICAL_CASES)
def test_canonical_msgid(message_id: str, key: str) -> None:
    assert canonical_msgid(message_id) == key
    assert msgid_key(message_id, "auto") == key


# (receipt id, (exact, hex spelling of a decimal id, decimal value of a hex id))
RECEIPT_KEY_CASES = [
    # decimal receipt for a hex submit_sm_resp id: the hex spelling is candidate 1
    ("288230376293190992", ("288230376293190992", "4000000086ECD50", str(0x288230376293190992))),
    ("704643072", ("704643072", "2A000000", str(0x704643072))),
    # hex receipt for a decimal submit_sm_resp id: the decimal value is candidate 2
    ("04000000086ECD50", ("4000000086ECD50", None, "288230376293190992")),
    ("2a000000", ("2A000000", None, "704643072")),
    ("0000012345", ("12345", "3039", "74565")),
    # single digits read the same in both bases: one key
    ("7", ("7", None, None)),
    ("0", ("0", None, None)),
    # 10 decimal = A hex; "10" read as hex = 16
    ("10", ("10", "A", "16")),
    # not a number: only the id as written
    ("0118Z-0122I-2309U-57DGB", ("0118Z-0122I-2309U-57DGB", None, None)),
    ("１２", ("１２", None, None)),  # full-width digits are not a number
    ("²", ("²", None, None)),
    ("12\ufffd34", ("12\ufffd34", None, None)),
    ("F" * 33, ("F" * 33, None, None)),  # longer than any counter: not read as a number
]


@pytest.mark.parametrize(("message_id", "keys"), RECEIPT_KEY_CASES)
def test_receipt_keys_auto(message_id: str, keys: tuple[str, str | None, str | None]) -> None:
    assert receipt_keys(message_id, "auto") == keys


@pytest.mark.parametrize(
    ("message_id", "fmt", "keys"),
    [
        ("0000012345", "decimal", ("12345", None, None)),
        ("3039", "hex", ("12345", None, None)),
        (" 0042 ", "string", ("0042", None, None)),
    ],
)
def test_receipt_keys_explicit_format_gives_one_key(
    message_id: str, fmt: str, keys: tuple[str, str | None, str | None]
) -> None:
    assert receipt_keys(message_id, fmt) == keys


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=10))
def test_auto_keys_find_the_submit_key_in_either_base(value: int, padding: int) -> None:
    hex_id, decimal_id = "0" * padding + f"{value:x}", "0" * padding + str(value)
    # submit_sm_resp hex, receipt decimal
    index = receipt_keys(decimal_id, "auto").index(msgid_key(hex_id, "auto"))
    assert ID_MAPPINGS[index] == ("exact" if value < 10 else "hex_to_decimal")
    # submit_sm_resp decimal, receipt hex
    index = receipt_keys(hex_id, "auto").index(msgid_key(decimal_id, "auto"))
    assert ID_MAPPINGS[index] in (("exact",) if value < 10 else ("decimal_to_hex", "hex_to_decimal"))


@given(st.text(max_size=80))
def test_receipt_keys_never_raise_and_never_repeat(message_id: str) -> None:
    keys = [key for key in receipt_keys(message_id, "auto") if key is not None]
    assert len(keys) == len(set(keys))
    assert all(isinstance(key, str) and "\x00" not in key for key in keys)



@pytest.mark.parametrize(
    ("message_id", "fmt", "key"),
    [
        ("04000000086ECD50", "hex", "288230376293190992"),
        ("288230376293190992", "decimal", "288230376293190992"),
        ("0000012345", "decimal", "12345"),
        ("12345", "decimal", "12345"),
        ("1A2B3C4D", "hex", "439041101"),
        ("1a2b3c4d", "hex", "439041101"),
        ("0", "decimal", "0"),
        (" 42 ", "string", "42"),
        ("0000012345", "string", "0000012345"),
        ("0118Z-0122I-2309U-57DGB", "decimal", "0118Z-0122I-2309U-57DGB"),
        ("0118Z-0122I-2309U-57DGB", "hex", "0118Z-0122I-2309U-57DGB"),
        ("1A2B", "decimal", "1A2B"),
        ("", "hex", ""),
        ("", "decimal", ""),
        ("+12", "decimal", "+12"),
        ("1_000", "decimal", "1_000"),
        ("0x1F", "hex", "0x1F"),
        ("１２", "decimal", "１２"),  # full-width digits are not a decimal id
        (" 00ff ", "hex", "255"),
    ],
)
def test_msgid_key(message_id: str, fmt: str, key: str) -> None:
    assert msgid_key(message_id, fmt) == key


def test_msgid_key_matches_across_bases() -> None:
    resp = msgid_key("04000000086ECD50", "hex")
    receipt = parse_receipt(b"id:288230376293190992 stat:DELIVRD")
    assert msgid_key(receipt.message_id, "decimal") == resp


def test_msgid_key_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown message id format"):
        msgid_key("1", "octal")


@given(st.text(max_size=40), st.sampled_from(["string", "decimal", "hex"]))
def test_msgid_key_never_raises(message_id: str, fmt: str) -> None:
    assert isinstance(msgid_key(message_id, fmt), str)


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=10))
def test_msgid_key_hex_and_decimal_agree(value: int, padding: int) -> None:
    hex_id = "0" * padding + f"{value:X}"
    decimal_id = "0" * padding + str(value)
    assert msgid_key(hex_id, "hex") == msgid_key(decimal_id, "decimal") == str(value)


# --- the simulator's receipt text ------------------------------------------------------------------


def test_format_receipt_text_standard_form() -> None:
    data = format_receipt_text(
        "0123456789",
        "DELIVRD",
        submit_date=datetime(2008, 9, 1, 11, 30, 59),
        done_date=datetime(2008, 9, 1, 11, 31),
        text="Hello world, this is a long message",
    )
    assert data == SPEC_EXAMPLE


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"stat": "UNDELIV", "err": 75}, b"dlvrd:000 submit date:0000000000 done date:0000000000 stat:UNDELIV err:075"),
        ({"stat": "DELIVRD", "submitted": 3}, b"sub:003 dlvrd:003"),
        ({"stat": "EXPIRED", "err": "X0B"}, b"stat:EXPIRED err:X0B text:"),
        ({"stat": "DELIVRD", "text": "€ 😀"}, b"text:? ?"),
    ],
)
def test_format_receipt_text_fields(kwargs: dict[str, object], expected: bytes) -> None:
    data = format_receipt_text("1", submit_date=None, done_date=None, **kwargs)  # type: ignore[arg-type]
    assert expected in data


@pytest.mark.parametrize(
    ("message_id", "stat", "err", "submitted"),
    [
        ("", "DELIVRD", 0, 1),
        ("a b", "DELIVRD", 0, 1),
        ("a:b", "DELIVRD", 0, 1),
        ("1", "", 0, 1),
        ("1", "DEL IV", 0, 1),
        ("1", "DELIVRD", "", 1),
        ("1", "DELIVRD", 0, 1000),
        ("1", "DELIVRD", 0, -1),
    ],
)
def test_format_receipt_text_rejects_unparseable_values(
    message_id: str, stat: str, err: int | str, submitted: int
) -> None:
    with pytest.raises(ValueError):
        format_receipt_text(message_id, stat, submit_date=None, done_date=None, err=err, submitted=submitted)


_ID_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E).filter(lambda char: char != ":")


@given(
    message_id=st.text(_ID_CHARS, min_size=1, max_size=64),
    stat=st.sampled_from(sorted(MESSAGE_STATES.values())),
    submit=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)),
    done=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)),
    err=st.integers(0, 999),
    text=st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40),
)
def test_format_then_parse_round_trip(
    message_id: str, stat: str, submit: datetime, done: datetime, err: int, text: str
) -> None:
    data = format_receipt_text(message_id, stat, submit_date=submit, done_date=done, err=err, text=text)
    receipt = parse_receipt(data)
    assert receipt.message_id == message_id
    assert receipt.stat == stat
    assert receipt.err == f"{err:03d}"
    assert receipt.submit_date == submit.replace(second=0, microsecond=0)
    assert receipt.done_date == done.replace(second=0, microsecond=0)
    assert receipt.text == text[:20].rstrip("\x00")


# The fast path for the standard layout must give what the tolerant parser gives, for any values it accepts.
_VALUE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=":"), min_size=1, max_size=12).filter(
    lambda v: not any(c.isspace() for c in v)
)


@given(
    message_id=_VALUE,
    stat=_VALUE,
    err=_VALUE,
    sub=st.integers(0, 999),
    dlvrd=st.integers(0, 999),
    submit=st.from_regex(r"[0-9]{10}|[0-9]{12}", fullmatch=True),
    done=st.from_regex(r"[0-9]{10}|[0-9]{12}", fullmatch=True),
    text=st.text(max_size=30),
)
def test_standard_layout_fast_path_agrees_with_the_tolerant_parser(
    message_id: str, stat: str, err: str, sub: int, dlvrd: int, submit: str, done: str, text: str
) -> None:
    from gateway.smpp.receipt import _standard_fields, _tolerant_fields

    decoded = (
        f"id:{message_id} sub:{sub:03d} dlvrd:{dlvrd:03d} submit date:{submit} done date:{done}"
        f" stat:{stat} err:{err} text:{text}"
    )
    fast = _standard_fields(decoded)
    assert fast is not None
    assert fast == _tolerant_fields(decoded)
