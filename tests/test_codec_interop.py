"""Interop of our codec with aiosmpplib 0.7.4, an independent SMPP 3.4 implementation.

aiosmpplib's PDU classes live in `aiosmpplib.protocol`: `SmppMessage.pdu()` encodes a whole PDU, and decoding
is what its ESME does in `_get_pdu` / `_process_*`: `SmppMessage.parse_header(raw)` gives a `PduHeader`, then
`MESSAGE_TYPE_MAP[header.smpp_command].from_pdu(raw, header, default_encoding, custom_codecs)` builds the
message. submit_sm/deliver_sm text is a `str` decoded with the codec named by data_coding (0 = the ESME's
default encoding, GSM 03.38 unpacked, "gsm0338"), and TLVs come back as `OptionalParam(tag, int | str)`.

Each PDU is checked both ways: encoded by us and decoded by aiosmpplib, and encoded by aiosmpplib and
decoded by us. Where aiosmpplib cannot represent something, that direction is skipped with the reason.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import aiosmpplib as aio
import pytest
from aiosmpplib.protocol import MESSAGE_TYPE_MAP
from aiosmpplib.state import (
    MESSAGE_STATE,
    NETWORK_ERROR_CODE,
    RECEIPTED_MESSAGE_ID,
    SAR_MSG_REF_NUM,
    SAR_SEGMENT_SEQNUM,
    SAR_TOTAL_SEGMENTS,
    USER_MESSAGE_REFERENCE,
)

from gateway.smpp.codec import decode, encode
from gateway.smpp.pdu import (
    BindTransceiver,
    BindTransceiverResp,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Pdu,
    Status,
    SubmitSm,
    SubmitSmResp,
    Tag,
    Unbind,
    UnbindResp,
)

GSM_DEFAULT = "gsm0338"  # aiosmpplib's name for the SMSC default alphabet (data_coding 0)


def aio_decode(raw: bytes, default_encoding: str = GSM_DEFAULT) -> aio.SmppMessage:
    """Decode one PDU the way aiosmpplib's ESME does."""
    header = aio.SmppMessage.parse_header(raw)
    assert header.pdu_length == len(raw)
    return MESSAGE_TYPE_MAP[header.smpp_command].from_pdu(raw, header, default_encoding, None)


def aio_params(message: aio.SubmitSm) -> dict[int, int | str | bool]:
    return {param.tag: param.value for param in message.optional_params or []}


# -- bind_transceiver ------------------------------------------------------------------------------------


def test_bind_transceiver_encoded_by_us_decodes_in_aiosmpplib() -> None:
    ours = BindTransceiver(
        sequence_number=1,
        system_id="esme01",
        password="secret",
        system_type="SMPP",
        addr_ton=1,
        addr_npi=1,
        address_range="^4477",
    )
    theirs = aio_decode(encode(ours))
    assert isinstance(theirs, aio.BindTransceiver)
    assert theirs.sequence_num == 1
    assert theirs.command_status == 0
    assert (theirs.system_id, theirs.password, theirs.system_type) == ("esme01", "secret", "SMPP")
    assert theirs.interface_version == 0x34
    assert (theirs.addr_ton, theirs.addr_npi) == (aio.TON.INTERNATIONAL, aio.NPI.ISDN)
    assert theirs.address_range == "^4477"


def test_bind_transceiver_encoded_by_aiosmpplib_decodes_in_ours_and_matches_our_bytes() -> None:
    theirs = aio.BindTransceiver(
        sequence_num=2,
        system_id="esme01",
        password="secret",
        system_type="",
        addr_ton=aio.TON.ALPHANUMERIC,
        addr_npi=aio.NPI.UNKNOWN,
        address_range="",
    )
    expected = BindTransceiver(sequence_number=2, system_id="esme01", password="secret", addr_ton=5)
    assert decode(theirs.pdu()) == expected
    assert encode(expected) == theirs.pdu()


@pytest.mark.parametrize("sc_interface_version", [None, 0x34])
def test_bind_transceiver_resp_round_trips_between_the_two_codecs(sc_interface_version: int | None) -> None:
    tlvs = {} if sc_interface_version is None else {Tag.SC_INTERFACE_VERSION: bytes([sc_interface_version])}
    ours = BindTransceiverResp(sequence_number=2, system_id="SMSC", tlvs=tlvs)
    theirs = aio.BindTransceiverResp(
        sequence_num=2, system_id="SMSC", sc_interface_version=sc_interface_version
    )
    decoded_by_them = aio_decode(encode(ours))
    assert isinstance(decoded_by_them, aio.BindTransceiverResp)
    assert decoded_by_them.system_id == "SMSC"
    assert decoded_by_them.sc_interface_version == sc_interface_version
    assert decode(theirs.pdu()) == ours
    assert encode(ours) == theirs.pdu()


# -- submit_sm ---------------------------------------------------------------------------------------------


def test_submit_sm_encoded_by_us_decodes_in_aiosmpplib() -> None:
    ours = SubmitSm(
        sequence_number=8,
        service_type="CMT",
        source_addr_ton=5,
        source_addr_npi=0,
        source_addr="INFO",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr="447700900123",
        priority_flag=1,
        # Offset "00": aiosmpplib 0.7.4 reads the nn field as hours, not quarter-hours, and keeps a 2-digit
        # year, so only a UTC time compares equal after its decode (its encoder is right; see below).
        schedule_delivery_time="240131120000000+",
        validity_period="000001000000000R",
        registered_delivery=1,
        data_coding=0,
        short_message=b"Hello \x00 world",  # GSM 7-bit unpacked: 0x00 is '@'
        tlvs={
            Tag.USER_MESSAGE_REFERENCE: b"\x00\x2a",
            Tag.SAR_MSG_REF_NUM: b"\x01\x02",
            Tag.SAR_TOTAL_SEGMENTS: b"\x02",
            Tag.SAR_SEGMENT_SEQNUM: b"\x01",
        },
    )
    theirs = aio_decode(encode(ours))
    assert type(theirs) is aio.SubmitSm
    assert theirs.sequence_num == 8
    assert theirs.service_type == "CMT"
    assert theirs.source == aio.PhoneNumber("INFO", aio.TON.ALPHANUMERIC, aio.NPI.UNKNOWN)
    assert theirs.destination == aio.PhoneNumber("447700900123", aio.TON.INTERNATIONAL, aio.NPI.ISDN)
    assert (theirs.esm_class, theirs.protocol_id, theirs.priority_flag) == (0, 0, 1)
    assert aio.SubmitSm.datetime_to_smpp_time(theirs.schedule_delivery_time) == "240131120000000+"
    assert theirs.validity_period == timedelta(days=1)
    assert (theirs.registered_delivery, theirs.replace_if_present_flag, theirs.sm_default_msg_id) == (1, 0, 0)
    assert theirs.encoding is None  # data_coding 0: the default alphabet
    assert theirs.short_message == "Hello @ world"
    assert theirs.message_payload == ""
    assert aio_params(theirs) == {
        USER_MESSAGE_REFERENCE: 42,
        SAR_MSG_REF_NUM: 0x0102,
        SAR_TOTAL_SEGMENTS: 2,
        SAR_SEGMENT_SEQNUM: 1,
    }


def test_ucs2_submit_sm_encoded_by_us_decodes_in_aiosmpplib() -> None:
    text = "Привет, мир"
    ours = SubmitSm(
        sequence_number=9,
        source_addr="INFO",
        destination_addr="447700900123",
        data_coding=8,
        short_message=text.encode("utf-16-be"),
    )
    theirs = aio_decode(encode(ours))
    assert isinstance(theirs, aio.SubmitSm)
    assert theirs.encoding == "ucs2"
    assert theirs.short_message == text


def test_submit_sm_encoded_by_aiosmpplib_decodes_in_ours() -> None:
    theirs = aio.SubmitSm(
        sequence_num=8,
        short_message="Hello @ world",
        source=aio.PhoneNumber("INFO", aio.TON.ALPHANUMERIC, aio.NPI.UNKNOWN),
        destination=aio.PhoneNumber("447700900123", aio.TON.INTERNATIONAL, aio.NPI.ISDN),
        service_type="CMT",
        priority_flag=1,
        schedule_delivery_time=datetime(2024, 1, 31, 12, 0, 0, tzinfo=timezone(timedelta(hours=1))),
        validity_period=timedelta(days=1),
        registered_delivery=1,
        optional_params=[aio.OptionalParam(USER_MESSAGE_REFERENCE, 42)],
    )
    ours = decode(theirs.pdu())
    assert ours == SubmitSm(
        sequence_number=8,
        service_type="CMT",
        source_addr_ton=5,
        source_addr_npi=0,
        source_addr="INFO",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr="447700900123",
        priority_flag=1,
        schedule_delivery_time="240131120000004+",  # +1 hour = 4 quarter-hours
        validity_period="000001000000000R",
        registered_delivery=1,
        data_coding=0,
        short_message=b"Hello \x00 world",
        tlvs={Tag.USER_MESSAGE_REFERENCE: b"\x00\x2a"},
    )
    assert encode(ours) == theirs.pdu()


def test_ucs2_submit_sm_encoded_by_aiosmpplib_decodes_in_ours() -> None:
    text = "Привет, мир"
    theirs = aio.SubmitSm(
        sequence_num=9,
        short_message=text,  # not GSM: aiosmpplib falls back to UCS2, data_coding 8
        source=aio.PhoneNumber("INFO", aio.TON.ALPHANUMERIC),
        destination=aio.PhoneNumber("447700900123", aio.TON.INTERNATIONAL, aio.NPI.ISDN),
        registered_delivery=0,
    )
    ours = decode(theirs.pdu())
    assert isinstance(ours, SubmitSm)
    assert ours.data_coding == 8
    assert ours.short_message.decode("utf-16-be") == text
    assert ours.tlvs == {}


def test_long_submit_sm_from_aiosmpplib_arrives_as_message_payload_with_empty_short_message() -> None:
    text = "x" * 300
    theirs = aio.SubmitSm(
        sequence_num=10,
        short_message=text,  # over 254 octets: aiosmpplib moves it to message_payload
        source=aio.PhoneNumber("INFO", aio.TON.ALPHANUMERIC),
        destination=aio.PhoneNumber("447700900123", aio.TON.INTERNATIONAL, aio.NPI.ISDN),
    )
    ours = decode(theirs.pdu())
    assert isinstance(ours, SubmitSm)
    assert ours.short_message == b""
    assert ours.tlvs == {Tag.MESSAGE_PAYLOAD: text.encode("ascii")}


# -- submit_sm_resp --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "message_id"),
    [
        (SubmitSmResp(sequence_number=8, message_id="5f0c2a1e-0001"), "5f0c2a1e-0001"),
        # Our error response has no body at all; aiosmpplib reads an empty message_id from it.
        (SubmitSmResp(sequence_number=9, command_status=Status.RTHROTTLED), ""),
        (SubmitSmResp(sequence_number=0x7FFFFFFF, command_status=Status.RINVDSTADR), ""),
    ],
)
def test_submit_sm_resp_encoded_by_us_decodes_in_aiosmpplib(ours: SubmitSmResp, message_id: str) -> None:
    theirs = aio_decode(encode(ours))
    assert type(theirs) is aio.SubmitSmResp
    assert theirs.sequence_num == ours.sequence_number
    assert theirs.command_status == ours.command_status
    assert theirs.message_id == message_id


@pytest.mark.parametrize(
    ("theirs", "expected"),
    [
        (
            aio.SubmitSmResp(sequence_num=8, message_id="5f0c2a1e-0001"),
            SubmitSmResp(sequence_number=8, message_id="5f0c2a1e-0001"),
        ),
        # aiosmpplib cannot send an error response without a body: it always writes message_id, here an
        # empty one (a single NUL). We must read that as the same error response.
        (
            aio.SubmitSmResp(sequence_num=9, command_status=aio.SmppCommandStatus.ESME_RTHROTTLED),
            SubmitSmResp(sequence_number=9, command_status=Status.RTHROTTLED),
        ),
    ],
)
def test_submit_sm_resp_encoded_by_aiosmpplib_decodes_in_ours(
    theirs: aio.SubmitSmResp, expected: SubmitSmResp
) -> None:
    assert decode(theirs.pdu()) == expected


# -- deliver_sm: MO message and delivery receipt ---------------------------------------------------------

MO = DeliverSm(
    sequence_number=20,
    source_addr_ton=1,
    source_addr_npi=1,
    source_addr="447700900123",
    dest_addr_ton=0,
    dest_addr_npi=0,
    destination_addr="12345",
    short_message=b"STOP",
)

RECEIPT_TEXT = (
    "id:abc123 sub:001 dlvrd:001 submit date:2401311200 done date:2401311201 stat:DELIVRD err:000 text:Hello"
)
RECEIPT = DeliverSm(
    sequence_number=21,
    source_addr_ton=1,
    source_addr_npi=1,
    source_addr="447700900123",
    destination_addr="12345",
    esm_class=0x04,
    short_message=RECEIPT_TEXT.encode("ascii"),
    tlvs={Tag.RECEIPTED_MESSAGE_ID: b"abc123\x00", Tag.MESSAGE_STATE: b"\x02"},
)


def test_mo_deliver_sm_encoded_by_us_decodes_in_aiosmpplib() -> None:
    theirs = aio_decode(encode(MO))
    assert isinstance(theirs, aio.DeliverSm)
    assert theirs.sequence_num == 20
    assert theirs.source == aio.PhoneNumber("447700900123", aio.TON.INTERNATIONAL, aio.NPI.ISDN)
    assert theirs.destination == aio.PhoneNumber("12345")
    assert theirs.short_message == "STOP"
    assert not theirs.is_receipt()
    assert theirs.schedule_delivery_time is None
    assert theirs.validity_period is None
    assert theirs.registered_delivery == 0
    assert aio_params(theirs) == {}


def test_mo_deliver_sm_encoded_by_aiosmpplib_decodes_in_ours() -> None:
    theirs = aio.DeliverSm(
        sequence_num=20,
        short_message="STOP",
        source=aio.PhoneNumber("447700900123", aio.TON.INTERNATIONAL, aio.NPI.ISDN),
        destination=aio.PhoneNumber("12345"),
        registered_delivery=0,
    )
    ours = decode(theirs.pdu())
    assert ours == MO
    assert isinstance(ours, DeliverSm)
    assert not ours.is_receipt
    assert encode(MO) == theirs.pdu()


def test_receipt_deliver_sm_encoded_by_us_decodes_in_aiosmpplib() -> None:
    theirs = aio_decode(encode(RECEIPT))
    assert isinstance(theirs, aio.DeliverSm)
    assert theirs.sequence_num == 21
    assert theirs.esm_class == 0x04
    assert theirs.is_receipt()
    assert theirs.short_message == RECEIPT_TEXT
    # receipted_message_id is a C-octet string: aiosmpplib drops the NUL, as our tlv_str does.
    assert aio_params(theirs) == {RECEIPTED_MESSAGE_ID: "abc123", MESSAGE_STATE: 2}
    receipt = theirs.parse_receipt()
    assert receipt["id"] == "abc123"
    assert receipt["stat"] == "DELIVRD"
    assert receipt["err"] == 0


def test_receipt_deliver_sm_encoded_by_aiosmpplib_decodes_in_ours() -> None:
    theirs = aio.DeliverSm(
        sequence_num=21,
        short_message=RECEIPT_TEXT,
        source=aio.PhoneNumber("447700900123", aio.TON.INTERNATIONAL, aio.NPI.ISDN),
        destination=aio.PhoneNumber("12345"),
        esm_class=0x04,
        registered_delivery=0,
        optional_params=[
            aio.OptionalParam(RECEIPTED_MESSAGE_ID, "abc123"),
            aio.OptionalParam(MESSAGE_STATE, 2),
        ],
    )
    ours = decode(theirs.pdu())
    assert ours == RECEIPT
    assert isinstance(ours, DeliverSm)
    assert ours.is_receipt
    assert ours.tlv_str(Tag.RECEIPTED_MESSAGE_ID) == "abc123"
    assert ours.tlv_int(Tag.MESSAGE_STATE) == 2
    assert encode(RECEIPT) == theirs.pdu()


def test_receipt_with_network_error_code_encoded_by_aiosmpplib_decodes_in_ours() -> None:
    # aiosmpplib has no binary TLV values: network_error_code (3 octets: type, 2-octet code) must be passed
    # as a str of code points 0-127, which it writes as ASCII octets. GSM (3) error 0x0022 fits that.
    theirs = aio.DeliverSm(
        sequence_num=22,
        short_message="id:abc124 stat:UNDELIV err:034",
        source=aio.PhoneNumber("447700900123", aio.TON.INTERNATIONAL, aio.NPI.ISDN),
        destination=aio.PhoneNumber("12345"),
        esm_class=0x04,
        registered_delivery=0,
        optional_params=[
            aio.OptionalParam(RECEIPTED_MESSAGE_ID, "abc124"),
            aio.OptionalParam(MESSAGE_STATE, 5),
            aio.OptionalParam(NETWORK_ERROR_CODE, "\x03\x00\x22"),
        ],
    )
    ours = decode(theirs.pdu())
    assert isinstance(ours, DeliverSm)
    assert ours.tlvs == {
        Tag.RECEIPTED_MESSAGE_ID: b"abc124\x00",
        Tag.MESSAGE_STATE: b"\x05",
        Tag.NETWORK_ERROR_CODE: b"\x03\x00\x22",
    }


@pytest.mark.skip(
    reason="aiosmpplib decodes network_error_code (0x0423) as an ASCII octet string and strips one trailing "
    "NUL, so a value such as 03 00 00 (GSM, code 0) comes back as '\\x03\\x00' and octets >= 0x80 raise "
    "UnicodeDecodeError: it cannot represent this binary TLV, so there is nothing to compare"
)
def test_receipt_with_network_error_code_encoded_by_us_decodes_in_aiosmpplib() -> None:
    raise AssertionError("skipped: see reason")


# -- deliver_sm_resp -------------------------------------------------------------------------------------


def test_deliver_sm_resp_encoded_by_us_decodes_in_aiosmpplib() -> None:
    theirs = aio_decode(encode(DeliverSmResp(sequence_number=21)))
    assert type(theirs) is aio.DeliverSmResp
    assert theirs.sequence_num == 21
    assert theirs.command_status == 0
    assert theirs.message_id == ""


def test_deliver_sm_resp_encoded_by_aiosmpplib_decodes_in_ours_and_matches_our_bytes() -> None:
    theirs = aio.DeliverSmResp(sequence_num=21)
    assert decode(theirs.pdu()) == DeliverSmResp(sequence_number=21)
    assert encode(DeliverSmResp(sequence_number=21)) == theirs.pdu()


def test_error_deliver_sm_resp_round_trips_between_the_two_codecs() -> None:
    ours = DeliverSmResp(sequence_number=23, command_status=Status.RX_T_APPN)
    theirs = aio.DeliverSmResp(sequence_num=23, command_status=aio.SmppCommandStatus.ESME_RX_T_APPN)
    decoded_by_them = aio_decode(encode(ours))
    assert decoded_by_them.command_status == aio.SmppCommandStatus.ESME_RX_T_APPN
    assert decode(theirs.pdu()) == ours


# -- header-only PDUs ------------------------------------------------------------------------------------

HEADER_ONLY: list[tuple[Pdu, aio.SmppMessage]] = [
    (EnquireLink(sequence_number=30), aio.EnquireLink(sequence_num=30)),
    (EnquireLinkResp(sequence_number=30), aio.EnquireLinkResp(sequence_num=30)),
    (Unbind(sequence_number=31), aio.Unbind(sequence_num=31)),
    (UnbindResp(sequence_number=31), aio.UnbindResp(sequence_num=31)),
    (
        GenericNack(sequence_number=32, command_status=Status.RINVCMDID),
        aio.GenericNack(sequence_num=32, command_status=aio.SmppCommandStatus.ESME_RINVCMDID),
    ),
    (
        GenericNack(sequence_number=0, command_status=Status.RINVCMDLEN),
        aio.GenericNack(sequence_num=0, command_status=aio.SmppCommandStatus.ESME_RINVCMDLEN),
    ),
    (EnquireLink(sequence_number=0xFFFFFFFF), aio.EnquireLink(sequence_num=0xFFFFFFFF)),
]
HEADER_ONLY_IDS = [f"{type(o).__name__}-seq{o.sequence_number}" for o, _ in HEADER_ONLY]


@pytest.mark.parametrize(("ours", "theirs"), HEADER_ONLY, ids=HEADER_ONLY_IDS)
def test_header_only_pdu_encoded_by_us_decodes_in_aiosmpplib(ours: Pdu, theirs: aio.SmppMessage) -> None:
    decoded = aio_decode(encode(ours))
    assert type(decoded) is type(theirs)
    assert decoded.smpp_command == ours.command_id
    assert decoded.sequence_num == ours.sequence_number
    assert decoded.command_status == ours.command_status


@pytest.mark.parametrize(("ours", "theirs"), HEADER_ONLY, ids=HEADER_ONLY_IDS)
def test_header_only_pdu_encoded_by_aiosmpplib_decodes_in_ours(ours: Pdu, theirs: aio.SmppMessage) -> None:
    assert decode(theirs.pdu()) == ours
    assert encode(ours) == theirs.pdu()


def test_aiosmpplib_time_encoding_matches_the_format_we_send() -> None:
    # Both sides write absolute times as YYMMDDhhmmss t nn p with nn in quarter-hours.
    assert aio.SubmitSm.datetime_to_smpp_time(datetime(2024, 1, 31, 12, 0, 0, tzinfo=UTC)) == "240131120000000+"
    assert aio.SubmitSm.datetime_to_smpp_time(timedelta(days=1, hours=2)) == "000001020000000R"
