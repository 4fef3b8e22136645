"""Concatenation info from UDH and SAR TLVs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.smpp.pdu import Tag
from gateway.smpp.udh import Part, concatenation


def test_plain_message_is_one_part() -> None:
    assert concatenation(0, b"STOP", {}) == Part(0, 1, 1, b"STOP")


def test_udh_8bit_reference() -> None:
    assert concatenation(0x40, bytes.fromhex("050003a50302") + b"abc", {}) == Part(0xA5, 3, 2, b"abc")


def test_udh_16bit_reference() -> None:
    assert concatenation(0x40, bytes.fromhex("0608041234020 1".replace(" ", "")) + b"x", {}) == Part(
        0x1234, 2, 1, b"x"
    )


def test_udh_without_concatenation_is_stripped() -> None:
    # IEI 0x05: application ports only.
    assert concatenation(0x40, bytes.fromhex("0605040b8423f0") + b"wap", {}) == Part(0, 1, 1, b"wap")


def test_sar_tlvs() -> None:
    tlvs = {Tag.SAR_MSG_REF_NUM: b"\x00\x07", Tag.SAR_TOTAL_SEGMENTS: b"\x03", Tag.SAR_SEGMENT_SEQNUM: b"\x03"}
    assert concatenation(0, b"end", tlvs) == Part(7, 3, 3, b"end")


def test_inconsistent_udh_falls_back_to_one_part() -> None:
    # seq 4 of 3, and a UDH length beyond the data
    assert concatenation(0x40, bytes.fromhex("050003010304") + b"a", {}).total == 1
    assert concatenation(0x40, b"\x09\x00", {}) == Part(0, 1, 1, b"\x09\x00")


@given(st.integers(0, 255), st.binary(max_size=300), st.dictionaries(st.integers(0, 0xFFFF), st.binary(max_size=4)))
def test_never_raises(esm_class: int, data: bytes, tlvs: dict[int, bytes]) -> None:
    part = concatenation(esm_class, data, tlvs)
    assert 1 <= part.seq <= part.total
