"""Text encodings for ``short_message``: GSM 03.38, Latin-1 and UCS-2 (UTF-16BE).

Everything here is pure and table-driven. ``gsm7_encode``/``gsm7_decode`` sit on the submit and
deliver hot paths, so the tables are precomputed into ``str.translate`` maps and ``codecs.charmap``
tables instead of per-character Python loops.

GSM-7 here means *unpacked* (one septet per octet), which is what most SMSCs take for data_coding 0;
``gsm7_pack``/``gsm7_unpack`` convert to and from the packed 7-bit form for the SMSCs that want it.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DC_BINARY",
    "DC_GSM7",
    "DC_IA5",
    "DC_LATIN1",
    "DC_UCS2",
    "ESC",
    "PART_LIMITS_UDH8",
    "PART_LIMITS_UDH16",
    "SINGLE_LIMITS",
    "EncodedText",
    "UnencodableError",
    "decode_short_message",
    "encode_text",
    "fits_single",
    "gsm7_decode",
    "gsm7_encode",
    "gsm7_pack",
    "gsm7_septets",
    "gsm7_unpack",
    "is_gsm7",
]

DC_GSM7: Final = 0x00
DC_IA5: Final = 0x01
DC_BINARY: Final = 0x02
DC_LATIN1: Final = 0x03
DC_UCS2: Final = 0x08

ESC: Final = 0x1B

# Single-SMS capacity in `EncodedText.units` (septets / octets / UTF-16 code units).
SINGLE_LIMITS: Final[dict[int, int]] = {DC_GSM7: 160, DC_LATIN1: 140, DC_UCS2: 70}
# Per-part capacity of a concatenated message with an 8-bit reference UDH (05 00 03 RR TT SS).
PART_LIMITS_UDH8: Final[dict[int, int]] = {DC_GSM7: 153, DC_LATIN1: 134, DC_UCS2: 67}
# Per-part capacity with a 16-bit reference UDH (06 08 04 RR RR TT SS).
PART_LIMITS_UDH16: Final[dict[int, int]] = {DC_GSM7: 152, DC_LATIN1: 133, DC_UCS2: 66}
# Any 8-bit payload is physically capped at 140 octets of user data.
_MAX_USER_DATA_OCTETS: Final = 140

# GSM 03.38 default alphabet, indexed by septet (3GPP TS 23.038; smpp-reference §8).
# Index 0x1B is ESC and never decodes to a character on its own: it is a placeholder here.
_BASIC: Final = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# Extension table: ESC + code (2 septets each). The backtick has no GSM code at all.
_EXTENSION: Final[dict[int, str]] = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}
assert len(_BASIC) == 128

# Decoding of septets above 0x7F in unpacked data: they cannot be GSM-7 (the SMSC sent 8-bit or
# packed data under data_coding 0), so they become U+FFFD rather than masked guesses that would
# silently turn garbage into plausible-looking text.
_BAD_SEPTET: Final = "\ufffd"

# 256-char charmap table for runs without ESC. 0x1B is only reached through the ESC path; map it
# to a space as a defensive default (23.038: display a space for an unsupported escape).
_DECODE_TABLE: Final = _BASIC[:ESC] + " " + _BASIC[ESC + 1 :] + _BAD_SEPTET * 128

# What follows an ESC. Unknown codes fall back to the basic table (the 23.038 rule: a receiver
# that does not know an extension character shows the basic-table character instead); ESC ESC is
# the reserved "escape to another extension table", shown as a space.
_EXT_DECODE: Final[tuple[str, ...]] = tuple(
    _EXTENSION.get(code, " " if code == ESC else _DECODE_TABLE[code]) for code in range(256)
)

# Encoder for ASCII input: str.translate keeps CPython's ASCII fast path while every output is
# ASCII (all septets are < 0x80). Unencodable ASCII characters (the backtick, most control
# characters) map to a non-ASCII sentinel so the following .encode("ascii") fails.
_SENTINEL: Final = "\u0100"
_ENCODE_ASCII: Final[dict[int, str]] = {}
# Encoder for other text: codecs.charmap_encode with int / bytes values, which reports the index
# of the first unmappable character itself.
_ENCODE_MAP: Final[dict[int, int | bytes]] = {}
for _code, _char in enumerate(_BASIC):
    if _code != ESC:
        _ENCODE_MAP[ord(_char)] = _code
for _code, _char in _EXTENSION.items():
    _ENCODE_MAP[ord(_char)] = bytes((ESC, _code))
for _cp in range(128):
    _mapped = _ENCODE_MAP.get(_cp)
    if _mapped is None:
        _ENCODE_ASCII[_cp] = _SENTINEL
    elif isinstance(_mapped, int):
        _ENCODE_ASCII[_cp] = chr(_mapped)
    else:
        _ENCODE_ASCII[_cp] = _mapped.decode("ascii")
del _code, _char, _cp, _mapped

_GSM_RE: Final = re.compile("[" + re.escape("".join(sorted(chr(cp) for cp in _ENCODE_MAP))) + "]*")


class UnencodableError(ValueError):
    """A character has no representation in the requested encoding."""

    def __init__(self, char: str, index: int, encoding: str = "GSM 03.38") -> None:
        self.char = char
        self.index = index
        self.encoding = encoding
        super().__init__(f"character {char!r} (U+{ord(char):04X}) at index {index} is not encodable in {encoding}")


@dataclass(frozen=True, slots=True)
class EncodedText:
    """A text ready for short_message / message_payload.

    ``units`` is what the SMS limits count: septets for GSM-7 (extension characters count 2),
    octets for Latin-1, UTF-16 code units for UCS-2 (a non-BMP character counts 2).
    """

    data_coding: int
    payload: bytes
    units: int


def gsm7_encode(text: str) -> bytes:
    """Encode ``text`` as unpacked GSM 03.38: one septet per octet, ESC + code for extension chars.

    Raises:
        UnencodableError: a character is in neither the default alphabet nor the extension
            table; ``.char`` and ``.index`` name the first one.
    """
    if text.isascii():
        try:
            return text.translate(_ENCODE_ASCII).encode("ascii")
        except UnicodeEncodeError:
            pass  # the translated index is shifted by ESC expansion: locate it in `text` instead
    try:
        return codecs.charmap_encode(text, "strict", _ENCODE_MAP)[0]
    except UnicodeEncodeError as exc:
        raise UnencodableError(text[exc.start], exc.start) from None


def gsm7_decode(data: bytes) -> str:
    """Decode unpacked GSM 03.38 septets; never raises.

    Tolerances: an unknown ESC sequence decodes the character after ESC from the basic table
    (the 23.038 fallback); ESC ESC decodes as a space; a trailing lone ESC is dropped; octets
    above 0x7F decode as U+FFFD.
    """
    if ESC not in data:
        return codecs.charmap_decode(data, "strict", _DECODE_TABLE)[0]
    parts: list[str] = []
    pos = 0
    end = len(data)
    while True:
        esc = data.find(ESC, pos)
        if esc < 0:
            parts.append(codecs.charmap_decode(data[pos:], "strict", _DECODE_TABLE)[0])
            break
        parts.append(codecs.charmap_decode(data[pos:esc], "strict", _DECODE_TABLE)[0])
        if esc + 1 >= end:
            break  # lone ESC at the end: a truncated sequence carries no character
        parts.append(_EXT_DECODE[data[esc + 1]])
        pos = esc + 2
    return "".join(parts)


def is_gsm7(text: str) -> bool:
    """Return True if every character of ``text`` is in the GSM 03.38 alphabet or its extension."""
    return _GSM_RE.fullmatch(text) is not None


def gsm7_septets(text: str) -> int:
    """Count the septets ``text`` takes in GSM-7: 1 per basic character, 2 per extension character.

    Raises:
        UnencodableError: ``text`` is not GSM-7 encodable.
    """
    # Encoding is the fastest count too: the output has exactly one octet per septet.
    return len(gsm7_encode(text))


# --- packed 7-bit -------------------------------------------------------------------------------
# Packing works on whole groups of 8 septets (= 7 octets) with big-int SWAR steps: per group the
# 8-bit lanes are squeezed to 7 bits in three shift/mask rounds instead of a loop per septet.


def _repeat_mask(pattern: int, lane_bytes: int, total_bytes: int) -> int:
    return int.from_bytes(pattern.to_bytes(lane_bytes, "little") * (total_bytes // lane_bytes), "little")


@functools.lru_cache(maxsize=128)
def _pack_masks(groups: int) -> tuple[int, ...]:
    size = groups * 8
    return (
        _repeat_mask(0x7F7F7F7F7F7F7F7F, 8, size),
        _repeat_mask(0x007F, 2, size),
        _repeat_mask(0x7F00, 2, size),
        _repeat_mask(0x00003FFF, 4, size),
        _repeat_mask(0x3FFF0000, 4, size),
        _repeat_mask(0x000000000FFFFFFF, 8, size),
        _repeat_mask(0x0FFFFFFF00000000, 8, size),
    )


def gsm7_pack(septets: bytes) -> bytes:
    """Pack septets (e.g. from ``gsm7_encode``) into 7-bit packed octets, starting at bit 0.

    When 7 bits would be left over in the last octet, a CR septet fills them (3GPP TS 23.038)
    so that a receiver does not read seven zero bits as '@'. The top bit of each input octet is
    ignored. No UDH fill bits are added: pack the text on its own.
    """
    count = len(septets)
    if count % 8 == 7:
        septets = septets + b"\r"  # a new object: never extend a caller's bytearray
        count += 1
    if not count:
        return b""
    groups = (count + 7) // 8
    all7, lo8, hi8, lo16, hi16, lo32, hi32 = _pack_masks(groups)
    value = int.from_bytes(septets, "little") & all7
    value = (value & lo8) | ((value & hi8) >> 1)
    value = (value & lo16) | ((value & hi16) >> 2)
    value = (value & lo32) | ((value & hi32) >> 4)
    # Each 8-octet lane now holds 56 bits: drop every lane's empty top octet.
    out = bytearray(value.to_bytes(groups * 8, "little"))
    del out[7::8]
    return bytes(out[: (count * 7 + 7) // 8])


def gsm7_unpack(data: bytes, septets: int | None = None) -> bytes:
    """Unpack 7-bit packed octets into one septet per octet.

    ``septets`` is the septet count when known (the TP-UDL); extra septets are cut off. Without
    it every whole septet is returned, except that a trailing CR or '@' filling exactly 7 spare
    bits is dropped as padding (3GPP TS 23.038), so a genuine trailing CR or '@' at septet
    8n is lost: pass ``septets`` when it matters.
    """
    octets = len(data)
    available = octets * 8 // 7
    count = available if septets is None else max(0, min(septets, available))
    if not count:
        return b""
    groups = (octets + 6) // 7
    padded = data + bytes(groups * 7 - octets)
    spread = bytearray(groups * 8)
    for offset in range(7):
        spread[offset::8] = padded[offset::7]
    _all7, lo8, hi8, lo16, hi16, lo32, hi32 = _pack_masks(groups)
    value = int.from_bytes(spread, "little")
    value = (value & lo32) | ((value & (hi32 >> 4)) << 4)
    value = (value & lo16) | ((value & (hi16 >> 2)) << 2)
    value = (value & lo8) | ((value & (hi8 >> 1)) << 1)
    out = value.to_bytes(groups * 8, "little")[:count]
    if septets is None and octets % 7 == 0 and out[-1] in (0x00, 0x0D):
        out = out[:-1]
    return out


# --- choosing and reading encodings ------------------------------------------------------------


def encode_text(text: str, *, latin1: bool = False) -> EncodedText:
    """Pick the cheapest encoding for ``text``: GSM-7, then Latin-1 if allowed, else UCS-2.

    GSM-7 is data_coding 0x00 (unpacked), Latin-1 0x03, UCS-2 0x08 sent as UTF-16BE so non-BMP
    characters become surrogate pairs counting 2 units.

    Raises:
        UnencodableError: ``text`` holds a lone surrogate, which no encoding can carry.
    """
    try:
        payload = gsm7_encode(text)
    except UnencodableError:
        pass
    else:
        return EncodedText(DC_GSM7, payload, len(payload))
    if latin1:
        try:
            payload = text.encode("latin-1")
        except UnicodeEncodeError:
            pass
        else:
            return EncodedText(DC_LATIN1, payload, len(payload))
    try:
        payload = text.encode("utf-16-be")
    except UnicodeEncodeError as exc:
        raise UnencodableError(text[exc.start], exc.start, "UTF-16") from None
    return EncodedText(DC_UCS2, payload, len(payload) // 2)


def fits_single(encoded: EncodedText) -> bool:
    """Return True if ``encoded`` fits in one SMS without concatenation.

    Unknown data_codings are treated as 8-bit data: at most 140 payload octets.
    """
    limit = SINGLE_LIMITS.get(encoded.data_coding)
    if limit is None:
        return len(encoded.payload) <= _MAX_USER_DATA_OCTETS
    return encoded.units <= limit


def _decode_latin1(data: bytes) -> str:
    return data.decode("latin-1")


def _decode_ucs2(data: bytes) -> str:
    # 'replace' gives the same result as surrogatepass followed by replacing the lone surrogates
    # with U+FFFD (tests check this), and it also covers an odd trailing octet.
    return data.decode("utf-16-be", "replace")


def _decode_iso8859_5(data: bytes) -> str:
    return data.decode("iso8859_5", "replace")


def _decode_iso8859_8(data: bytes) -> str:
    return data.decode("iso8859_8", "replace")


def _decode_iso2022_jp(data: bytes) -> str:
    return data.decode("iso2022_jp", "replace")


def _build_decoders() -> tuple[Callable[[bytes], str], ...]:
    table: list[Callable[[bytes], str]] = [_decode_latin1] * 256  # reserved and exotic codings: octets as Latin-1
    table[0x00] = gsm7_decode
    table[DC_UCS2] = _decode_ucs2
    table[0x06] = _decode_iso8859_5
    table[0x07] = _decode_iso8859_8
    table[0x0A] = _decode_iso2022_jp
    # 23.038 group 0001xxxx (uncompressed, with a message class): reserved in SMPP 3.4 but passed
    # through by many SMSCs. Bits 3-2 select GSM-7 / 8-bit / UCS-2 / reserved.
    for dc in range(0x10, 0x14):
        table[dc] = gsm7_decode
    for dc in range(0x18, 0x1C):
        table[dc] = _decode_ucs2
    # 23.038 message waiting groups: 0xC0-0xDF use GSM-7, 0xE0-0xEF UCS-2.
    for dc in range(0xC0, 0xE0):
        table[dc] = gsm7_decode
    for dc in range(0xE0, 0xF0):
        table[dc] = _decode_ucs2
    # Data coding / message class group 1111xxxx: bit 2 clear = GSM-7, set = 8-bit data.
    for dc in range(0xF0, 0xF4):
        table[dc] = gsm7_decode
    return tuple(table)


_DECODERS: Final = _build_decoders()


def decode_short_message(data: bytes, data_coding: int) -> str:
    """Decode a received short_message (or message_payload) by its data_coding; never raises.

    0x00 and the GSM-7 classes (0x10-0x13, 0xC0-0xDF, 0xF0-0xF3) decode as unpacked GSM-7;
    0x08, 0x18-0x1B and 0xE0-0xEF as UTF-16BE (bad surrogates and an odd octet become U+FFFD);
    0x06 ISO-8859-5, 0x07 ISO-8859-8, 0x0A ISO-2022-JP; everything else (IA5, Latin-1, binary,
    8-bit classes, reserved values, out-of-range data_coding) as Latin-1, which maps every octet.
    """
    decoder = _DECODERS[data_coding & 0xFF] if 0 <= data_coding <= 0xFF else _decode_latin1
    return decoder(data)
