"""Concatenation info of an incoming message: from a UDH (IEI 0x00 8-bit ref, 0x08 16-bit ref) or from
the SAR TLVs. Pure functions; a malformed UDH never raises, the message is then taken as one part."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.smpp.pdu import EsmClass, Tag


@dataclass(frozen=True, slots=True)
class Part:
    ref: int  # 0 for a single message
    total: int  # 1 for a single message
    seq: int  # 1-based
    payload: bytes  # user data without the UDH


def split_udh(short_message: bytes) -> tuple[bytes, bytes]:
    """(udh, rest) of a message whose UDHI bit is set; a UDH longer than the data gives (b"", data)."""
    if not short_message:
        return b"", short_message
    udhl = short_message[0]
    if 1 + udhl > len(short_message):
        return b"", short_message
    return short_message[: 1 + udhl], short_message[1 + udhl :]


def concatenation(esm_class: int, payload: bytes, tlvs: dict[int, bytes]) -> Part:
    """Where this message sits in a concatenated one; (0, 1, 1) for a plain message."""
    if esm_class & EsmClass.UDHI:
        udh, rest = split_udh(payload)
        if udh:
            ies = udh[1:]
            pos = 0
            while pos + 2 <= len(ies):
                iei, length = ies[pos], ies[pos + 1]
                value = ies[pos + 2 : pos + 2 + length]
                if len(value) < length:
                    break
                if iei == 0x00 and length == 3 and value[1] >= 1 and 1 <= value[2] <= value[1]:
                    return Part(value[0], value[1], value[2], rest)
                if iei == 0x08 and length == 4 and value[2] >= 1 and 1 <= value[3] <= value[2]:
                    return Part(int.from_bytes(value[:2], "big"), value[2], value[3], rest)
                pos += 2 + length
            return Part(0, 1, 1, rest)  # a UDH without concatenation (ports, ...): drop it from the text
    ref, total, seq = tlvs.get(Tag.SAR_MSG_REF_NUM), tlvs.get(Tag.SAR_TOTAL_SEGMENTS), tlvs.get(Tag.SAR_SEGMENT_SEQNUM)
    if ref and total and seq:
        t, s = total[0], seq[0]
        if t >= 1 and 1 <= s <= t:
            return Part(int.from_bytes(ref, "big"), t, s, payload)
    return Part(0, 1, 1, payload)
