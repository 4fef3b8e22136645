"""Long messages: optional smart encoding, then one short_message or a concatenated series of parts.

Pure logic on top of ``gateway.smpp.gsm``: a text is encoded once (GSM-7 unpacked, Latin-1 or UCS-2,
see ``encode_text``) and the encoded bytes are cut, so every part is exactly what goes into a
submit_sm. Four ways to send a long text (smpp-reference §8):

- ``udh8`` / ``udh16``: a concatenation UDH at the front of each part's short_message, esm_class UDHI;
- ``sar``: the SAR TLVs on each part, no UDH; parts are sized as if a UDH were added, because the
  SMSC builds one;
- ``payload``: the whole text in one message_payload TLV with an empty short_message; the SMSC splits.

A text that fits in one SMS is always sent as a plain short_message (no UDH, no TLVs), whatever the
method: that is the form every SMSC takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gateway.smpp.gsm import (
    DC_GSM7,
    DC_UCS2,
    ESC,
    PART_LIMITS_UDH8,
    PART_LIMITS_UDH16,
    encode_text,
    fits_single,
    is_gsm7,
)
from gateway.smpp.pdu import EsmClass, Tag

__all__ = [
    "MAX_SEGMENTS",
    "METHODS",
    "Segment",
    "SegmentedMessage",
    "TooLongError",
    "segment_text",
    "smart_encode",
]

METHODS: Final = frozenset({"udh8", "udh16", "sar", "payload"})
# Total and sequence number are one octet each in the UDH and in the SAR TLVs.
MAX_SEGMENTS: Final = 255

# --- smart encoding ------------------------------------------------------------------------------
# Look-alikes that word processors and phones put into otherwise plain text. Every key is outside
# GSM 03.38 (a test checks it), so a text that is already GSM-7 never changes. Deliberately left
# out: letters with an accent that GSM 03.38 has (é è ù ì ò à ä ö ñ ü Ä Ö Ñ Ü É Ç Ø ø Å å Æ æ ß),
# which stay as they are, and accented letters whose plain form reads as another word in their
# language (Portuguese ã/õ/â/ê/ô, French ê/î/û/ë/ï, ç - GSM has only the capital Ç): such texts
# go UCS-2 with their real characters instead of being rewritten.
_SMART_CHARS: Final[dict[str, str]] = {
    # apostrophes and single quotes
    "\u2018": "'",  # ‘ left single quotation mark
    "\u2019": "'",  # ’ right single quotation mark (the usual typographic apostrophe)
    "\u201a": "'",  # ‚ single low-9 quotation mark
    "\u201b": "'",  # ‛ single high-reversed-9 quotation mark
    "\u2032": "'",  # ′ prime
    "\u02bc": "'",  # ʼ modifier letter apostrophe
    "\u00b4": "'",  # ´ acute accent used as an apostrophe
    "`": "'",  # the grave accent has no GSM code at all
    # double quotes
    "\u201c": '"',  # “
    "\u201d": '"',  # ”
    "\u201e": '"',  # „
    "\u201f": '"',  # ‟
    "\u2033": '"',  # ″ double prime
    "\u00ab": '"',  # «
    "\u00bb": '"',  # »
    # dashes, minus, bullets
    "\u2010": "-",  # hyphen
    "\u2011": "-",  # non-breaking hyphen
    "\u2012": "-",  # figure dash
    "\u2013": "-",  # – en dash
    "\u2014": "-",  # — em dash
    "\u2015": "-",  # ― horizontal bar
    "\u2212": "-",  # − minus sign
    "\u2022": "-",  # • bullet
    "\u2043": "-",  # ⁃ hyphen bullet
    # ellipsis
    "\u2026": "...",
    # spaces: no-break, the U+2000 block, narrow no-break, medium mathematical, ideographic
    "\u00a0": " ",
    **{chr(cp): " " for cp in range(0x2000, 0x200B)},
    "\u202f": " ",
    "\u205f": " ",
    "\u3000": " ",
    # invisible characters carry nothing a reader sees: zero-width space, word joiner, BOM, soft hyphen
    "\u200b": "",
    "\u2060": "",
    "\ufeff": "",
    "\u00ad": "",
    # Spanish acute vowels (é/É are in GSM and stay): the plain vowel reads the same
    "á": "a",
    "í": "i",
    "ó": "o",
    "ú": "u",
    "Á": "A",
    "Í": "I",
    "Ó": "O",
    "Ú": "U",
}
_SMART_MAP: Final[dict[int, str]] = {ord(char): repl for char, repl in _SMART_CHARS.items()}


def smart_encode(text: str) -> str:
    """Replace look-alike characters (curly quotes, dashes, ellipsis, odd spaces, ...) so ``text`` is GSM-7.

    The replacement is all or nothing: it is returned only when the whole result is GSM-7 encodable.
    Otherwise (an emoji, Cyrillic, ...) the message goes UCS-2 anyway, so ``text`` is returned
    unchanged and keeps its real characters. A text that is GSM-7 already is returned as is.
    """
    if is_gsm7(text):
        return text
    replaced = text.translate(_SMART_MAP)
    if is_gsm7(replaced):
        return replaced
    return text


# --- segmentation --------------------------------------------------------------------------------


class TooLongError(ValueError):
    """The text needs more parts than allowed; the caller fails the message with reason ``too_long``."""

    def __init__(self, segments: int, max_segments: int) -> None:
        self.segments = segments
        self.max_segments = max_segments
        super().__init__(f"message needs {segments} parts, more than the limit of {max_segments}")


@dataclass(frozen=True, slots=True)
class Segment:
    """One submit_sm's worth of a message.

    ``payload`` is the short_message: UDH + text octets for ``udh8``/``udh16`` parts, text octets
    only for single parts and ``sar`` parts, empty for ``payload`` (the text is in ``tlvs``).
    ``esm_class`` is 0x40 (UDHI) exactly when ``payload`` starts with a UDH. ``seq`` counts from 1.
    """

    payload: bytes
    esm_class: int
    tlvs: dict[int, bytes]
    seq: int
    total: int


@dataclass(frozen=True, slots=True)
class SegmentedMessage:
    """A text ready to submit: the data_coding of every part, the parts, and the encoded size.

    ``units`` counts the whole text in SMS units: septets for GSM-7 (extension characters 2),
    octets for Latin-1, UTF-16 code units for UCS-2 (non-BMP characters 2).
    """

    data_coding: int
    segments: tuple[Segment, ...]
    units: int


def _cuts(payload: bytes, data_coding: int, limit: int) -> list[int]:
    """End offsets of the parts of ``payload`` when each part holds at most ``limit`` units."""
    if data_coding == DC_UCS2:
        step = limit * 2
    else:
        step = limit
    ends: list[int] = []
    start = 0
    size = len(payload)
    while start < size:
        end = min(start + step, size)
        if end < size:
            if data_coding == DC_GSM7 and payload[end - 1] == ESC:
                # ESC only ever appears as the first septet of an extension character (no extension
                # code is 0x1B), so a part ending in ESC has cut a character in two: move it whole.
                end -= 1
            elif data_coding == DC_UCS2 and 0xD8 <= payload[end - 2] <= 0xDB:
                # A high surrogate: the pair (one non-BMP character) moves whole to the next part.
                end -= 2
        ends.append(end)
        start = end
    return ends


def segment_text(
    text: str,
    *,
    method: str = "udh8",
    ref: int,
    latin1: bool = False,
    smart: bool = False,
    max_segments: int = 6,
) -> SegmentedMessage:
    """Encode ``text`` and cut it into the submit_sm parts of ``method``.

    The encoding is the cheapest that fits (``encode_text``: GSM-7, Latin-1 when ``latin1``, else
    UCS-2), after ``smart_encode`` when ``smart``. A text that fits one SMS (160 septets / 140
    octets / 70 UCS-2 units) is a single part without UDH or TLVs. Longer texts are cut into parts
    of 153/134/67 units (``udh8`` and ``sar``) or 152/133/66 (``udh16``); an extension character
    or a surrogate pair is never split across parts. ``payload`` keeps one part holding the whole
    text in message_payload; it is still limited to what ``udh8`` would need, since the SMSC splits
    it the same way and bills every part.

    ``ref`` is the concatenation reference shared by the parts: ``ref & 0xFF`` in an 8-bit UDH,
    ``ref & 0xFFFF`` in a 16-bit UDH and in sar_msg_ref_num.

    Raises:
        TooLongError: more than ``max_segments`` parts would be needed (``.segments`` says how many).
        ValueError: unknown ``method``, a negative ``ref``, or ``max_segments`` outside 1-255.
        UnencodableError: ``text`` holds a lone surrogate, which no encoding can carry.
    """
    if method not in METHODS:
        raise ValueError(f"unknown segmentation method {method!r}; expected one of {sorted(METHODS)}")
    if ref < 0:
        raise ValueError(f"concatenation reference must not be negative, got {ref}")
    if not 1 <= max_segments <= MAX_SEGMENTS:
        raise ValueError(f"max_segments must be 1-{MAX_SEGMENTS}, got {max_segments}")
    if smart:
        text = smart_encode(text)
    encoded = encode_text(text, latin1=latin1)
    dc, data = encoded.data_coding, encoded.payload
    if fits_single(encoded):
        return SegmentedMessage(dc, (Segment(data, 0, {}, 1, 1),), encoded.units)

    limits = PART_LIMITS_UDH16 if method == "udh16" else PART_LIMITS_UDH8
    ends = _cuts(data, dc, limits[dc])
    total = len(ends)
    # total > 255 is checked too: a one-octet total cannot express it even if max_segments allowed it.
    if total > max_segments:
        raise TooLongError(total, max_segments)

    if method == "payload":
        segment = Segment(b"", 0, {int(Tag.MESSAGE_PAYLOAD): data}, 1, 1)
        return SegmentedMessage(dc, (segment,), encoded.units)

    segments: list[Segment] = []
    start = 0
    for seq, end in enumerate(ends, 1):
        chunk = data[start:end]
        start = end
        if method == "udh8":
            udh = bytes((0x05, 0x00, 0x03, ref & 0xFF, total, seq))
            segments.append(Segment(udh + chunk, EsmClass.UDHI, {}, seq, total))
        elif method == "udh16":
            udh = bytes((0x06, 0x08, 0x04)) + (ref & 0xFFFF).to_bytes(2, "big") + bytes((total, seq))
            segments.append(Segment(udh + chunk, EsmClass.UDHI, {}, seq, total))
        else:  # sar
            tlvs = {
                int(Tag.SAR_MSG_REF_NUM): (ref & 0xFFFF).to_bytes(2, "big"),
                int(Tag.SAR_TOTAL_SEGMENTS): bytes((total,)),
                int(Tag.SAR_SEGMENT_SEQNUM): bytes((seq,)),
            }
            segments.append(Segment(chunk, 0, tlvs, seq, total))
    return SegmentedMessage(dc, tuple(segments), encoded.units)
