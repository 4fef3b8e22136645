"""Long messages: smart encoding, part sizes, UDH and SAR layouts, and interop with aiosmpplib 0.7.4."""

from __future__ import annotations

import math

import aiosmpplib as aio
import pytest
from aiosmpplib.protocol import MESSAGE_TYPE_MAP
from aiosmpplib.state import SAR_MSG_REF_NUM, SAR_SEGMENT_SEQNUM, SAR_TOTAL_SEGMENTS
from aiosmpplib.utils import split_sms_udh
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.smpp.codec import encode
from gateway.smpp.gsm import (
    _BASIC,
    _EXTENSION,
    DC_GSM7,
    DC_LATIN1,
    DC_UCS2,
    ESC,
    UnencodableError,
    decode_short_message,
    is_gsm7,
)
from gateway.smpp.pdu import SubmitSm, Tag
from gateway.smpp.segment import (
    _SMART_CHARS,
    MAX_SEGMENTS,
    Segment,
    SegmentedMessage,
    TooLongError,
    segment_text,
    smart_encode,
)

GSM_BASIC_CHARS = "".join(c for c in _BASIC if c != "\x1b")
GSM_EXT_CHARS = "".join(_EXTENSION.values())
GSM_CHARS = GSM_BASIC_CHARS + GSM_EXT_CHARS


def udh_of(segment: Segment) -> bytes:
    if not segment.esm_class & 0x40:
        return b""
    return segment.payload[: 1 + segment.payload[0]]


def text_of(segment: Segment) -> bytes:
    """The text octets of a part, wherever the method put them."""
    if Tag.MESSAGE_PAYLOAD in segment.tlvs:
        return segment.tlvs[Tag.MESSAGE_PAYLOAD]
    return segment.payload[len(udh_of(segment)) :]


def joined_text(message: SegmentedMessage) -> str:
    return "".join(decode_short_message(text_of(s), message.data_coding) for s in message.segments)


def air_octets(data_coding: int, udh_len: int, text_len: int) -> int:
    """TP-UD octets on the air interface: GSM-7 text is packed after the UDH, padded to a septet boundary."""
    if data_coding == DC_GSM7:
        udh_septets = math.ceil(udh_len * 8 / 7)
        return math.ceil((udh_septets + text_len) * 7 / 8)
    return udh_len + text_len


# --- smart encoding --------------------------------------------------------------------------------


def test_smart_table_never_touches_gsm_characters() -> None:
    for char, replacement in _SMART_CHARS.items():
        assert not is_gsm7(char), f"{char!r} is GSM 03.38 and must stay"
        assert is_gsm7(replacement)


@pytest.mark.parametrize("kept", list("éèùìòÇØøÅåÄÖÑÜßÉàäöñüΔΦΓΛΩΠΨΣΘΞÆæ¡¿£¥§¤€"))
def test_smart_keeps_gsm_letters(kept: str) -> None:
    assert smart_encode(f"“{kept}”") == f'"{kept}"'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It’s “great” — really…", 'It\'s "great" - really...'),
        ("‘single’ ‚low‛", "'single' 'low'"),
        ("„German“ «French»", '"German" "French"'),
        ("5 – 3 − 1 ‐ x ‑ y", "5 - 3 - 1 - x - y"),
        ("• one\n• two", "- one\n- two"),
        ("10\u00a0000\u202fkm\u2009ok\u3000", "10 000 km ok "),
        ("zero\u200bwidth\u00adsoft\ufeff", "zerowidthsoft"),
        ("canción está aquí, Ángel Óscar Ímpetu Último", "cancion esta aqui, Angel Oscar Impetu Ultimo"),
        ("don`t", "don't"),
        ("", ""),
    ],
)
def test_smart_replacements(text: str, expected: str) -> None:
    assert smart_encode(text) == expected
    assert is_gsm7(expected)


@pytest.mark.parametrize(
    "text",
    [
        "It’s 😀",  # an emoji keeps the message UCS-2: keep the real quote as well
        "“Привет”",
        "ação “x”",  # ã is not substituted (table is conservative), so nothing is
        "garçon – x",  # ç is not substituted to Ç
    ],
)
def test_smart_leaves_non_gsm_texts_unchanged(text: str) -> None:
    assert smart_encode(text) == text


def test_smart_is_used_by_segment_text_only_when_asked() -> None:
    assert segment_text("It’s", ref=1).data_coding == DC_UCS2
    smart = segment_text("It’s", ref=1, smart=True)
    assert smart.data_coding == DC_GSM7
    assert smart.segments[0].payload == b"It's"


@given(st.text())
def test_smart_result_is_gsm_or_unchanged(text: str) -> None:
    result = smart_encode(text)
    assert result == text or is_gsm7(result)
    if is_gsm7(text):
        assert result == text


# --- single parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["udh8", "udh16", "sar", "payload"])
@pytest.mark.parametrize(
    ("text", "latin1", "dc", "units"),
    [
        ("a" * 160, False, DC_GSM7, 160),
        ("€" * 80, False, DC_GSM7, 160),
        ("ã" * 140, True, DC_LATIN1, 140),
        ("ж" * 70, False, DC_UCS2, 70),
        ("😀" * 35, False, DC_UCS2, 70),
        ("", False, DC_GSM7, 0),
    ],
)
def test_single_part_at_the_limit_has_no_udh_and_no_tlvs(
    method: str, text: str, latin1: bool, dc: int, units: int
) -> None:
    message = segment_text(text, method=method, ref=9, latin1=latin1)
    assert message.data_coding == dc
    assert message.units == units
    (segment,) = message.segments
    assert segment == Segment(segment.payload, 0, {}, 1, 1)
    assert joined_text(message) == text


@pytest.mark.parametrize(
    ("text", "latin1"),
    [("a" * 161, False), ("€" * 80 + "a", False), ("ã" * 141, True), ("ж" * 71, False), ("😀" * 35 + "a", False)],
)
def test_one_unit_over_the_limit_makes_two_parts(text: str, latin1: bool) -> None:
    assert len(segment_text(text, ref=1, latin1=latin1).segments) == 2


# --- part sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "char", "latin1", "dc", "per_part"),
    [
        ("udh8", "a", False, DC_GSM7, 153),
        ("udh16", "a", False, DC_GSM7, 152),
        ("sar", "a", False, DC_GSM7, 153),
        ("udh8", "ã", True, DC_LATIN1, 134),
        ("udh16", "ã", True, DC_LATIN1, 133),
        ("sar", "ã", True, DC_LATIN1, 134),
        ("udh8", "ж", False, DC_UCS2, 67),
        ("udh16", "ж", False, DC_UCS2, 66),
        ("sar", "ж", False, DC_UCS2, 67),
    ],
)
@pytest.mark.parametrize("parts", [2, 6])
def test_exact_part_sizes(method: str, char: str, latin1: bool, dc: int, per_part: int, parts: int) -> None:
    octets_per_unit = 2 if dc == DC_UCS2 else 1
    text = char * (per_part * parts)
    message = segment_text(text, method=method, ref=0x1234, latin1=latin1)
    assert message.data_coding == dc
    assert message.units == per_part * parts
    assert [len(text_of(s)) for s in message.segments] == [per_part * octets_per_unit] * parts
    assert [(s.seq, s.total) for s in message.segments] == [(i, parts) for i in range(1, parts + 1)]
    assert joined_text(message) == text
    # One unit more needs one part more, with a single unit in it.
    longer = segment_text(text + char, method=method, ref=0x1234, latin1=latin1, max_segments=parts + 1)
    assert [len(text_of(s)) for s in longer.segments] == [per_part * octets_per_unit] * parts + [octets_per_unit]


def test_two_part_gsm_message_layout() -> None:
    text = "x" * 153 + "tail" * 3
    message = segment_text(text, ref=0x1A5, method="udh8")
    first, second = message.segments
    assert first == Segment(bytes.fromhex("050003a50201") + b"x" * 153, 0x40, {}, 1, 2)
    assert second == Segment(bytes.fromhex("050003a50202") + b"tail" * 3, 0x40, {}, 2, 2)
    assert all(len(s.payload) == 6 + len(text_of(s)) for s in message.segments)


def test_udh16_layout() -> None:
    message = segment_text("y" * 200, ref=0x1_ABCD, method="udh16")
    assert [udh_of(s) for s in message.segments] == [bytes.fromhex("060804abcd0201"), bytes.fromhex("060804abcd0202")]
    assert all(s.esm_class == 0x40 and s.tlvs == {} for s in message.segments)


def test_sar_tlvs_and_no_udh() -> None:
    message = segment_text("z" * 400, ref=0x2_0102, method="sar")
    assert len(message.segments) == 3
    for seq, segment in enumerate(message.segments, 1):
        assert segment.esm_class == 0
        assert segment.tlvs == {
            0x020C: b"\x01\x02",  # sar_msg_ref_num: ref & 0xFFFF, 2 octets
            0x020E: b"\x03",  # sar_total_segments
            0x020F: bytes((seq,)),  # sar_segment_seqnum
        }
        assert segment.payload == text_of(segment)  # no UDH in short_message
    assert [len(s.payload) for s in message.segments] == [153, 153, 94]


def test_payload_method_puts_the_whole_text_in_message_payload() -> None:
    text = "€ and more " * 40
    message = segment_text(text, method="payload", ref=5)
    (segment,) = message.segments
    assert segment.payload == b""
    assert segment.esm_class == 0
    assert list(segment.tlvs) == [0x0424]
    assert segment.tlvs[0x0424][:2] == bytes((ESC, 0x65))
    assert (segment.seq, segment.total) == (1, 1)
    assert joined_text(message) == text
    assert message.units == 480


def test_payload_method_is_limited_like_udh8() -> None:
    with pytest.raises(TooLongError) as info:
        segment_text("a" * (153 * 6 + 1), method="payload", ref=1)
    assert info.value.segments == 7


def test_ref_masks() -> None:
    assert udh_of(segment_text("a" * 200, ref=0x1FF, method="udh8").segments[0]) == bytes.fromhex("050003ff0201")
    assert udh_of(segment_text("a" * 200, ref=0x10000, method="udh16").segments[0]) == bytes.fromhex("06080400000201")


# --- part counts and the limit --------------------------------------------------------------------


@pytest.mark.parametrize(("length", "parts"), [(160, 1), (161, 2), (306, 2), (307, 3), (918, 6)])
def test_part_counts(length: int, parts: int) -> None:
    assert len(segment_text("a" * length, ref=1).segments) == parts


def test_seven_parts_with_a_limit_of_six_is_too_long() -> None:
    with pytest.raises(TooLongError) as info:
        segment_text("a" * 919, ref=1)
    assert info.value.segments == 7
    assert info.value.max_segments == 6
    assert isinstance(info.value, ValueError)
    assert len(segment_text("a" * 919, ref=1, max_segments=7).segments) == 7


def test_too_long_counts_after_boundary_moves() -> None:
    # 6 parts of 152 'a' + '€': each € moves whole, so 6 x 154 septets need 7 parts of at most 153.
    text = ("a" * 152 + "€") * 6
    with pytest.raises(TooLongError) as info:
        segment_text(text, ref=1)
    assert info.value.segments == 7


def test_limit_of_255() -> None:
    assert MAX_SEGMENTS == 255
    assert len(segment_text("a" * 153 * 255, ref=1, max_segments=255).segments) == 255
    with pytest.raises(TooLongError) as info:
        segment_text("a" * (153 * 255 + 1), ref=1, max_segments=255)
    assert info.value.segments == 256


@pytest.mark.parametrize("max_segments", [0, 256, -1])
def test_bad_max_segments(max_segments: int) -> None:
    with pytest.raises(ValueError, match="max_segments"):
        segment_text("a", ref=1, max_segments=max_segments)


def test_bad_method_and_ref() -> None:
    with pytest.raises(ValueError, match="method"):
        segment_text("a", ref=1, method="udh")
    with pytest.raises(ValueError, match="reference"):
        segment_text("a", ref=-1)


def test_lone_surrogate_is_unencodable() -> None:
    with pytest.raises(UnencodableError):
        segment_text("a\ud800b", ref=1)


# --- boundaries: extension characters and surrogate pairs ----------------------------------------


def test_euro_at_gsm_boundary_moves_whole() -> None:
    message = segment_text("a" * 152 + "€" + "b" * 10, ref=3)
    first, second = message.segments
    assert text_of(first) == b"a" * 152  # 152 septets: the ESC does not stay behind
    assert text_of(second) == bytes((ESC, 0x65)) + b"b" * 10
    assert joined_text(message) == "a" * 152 + "€" + "b" * 10
    assert message.units == 164


def test_extension_char_that_ends_exactly_at_boundary_stays() -> None:
    message = segment_text("a" * 151 + "€" + "b" * 10, ref=3)
    assert text_of(message.segments[0]) == b"a" * 151 + bytes((ESC, 0x65))  # 153 septets


@pytest.mark.parametrize("method", ["udh8", "udh16", "sar"])
@pytest.mark.parametrize("ext", list(GSM_EXT_CHARS))
def test_every_extension_char_at_every_method_boundary(method: str, ext: str) -> None:
    per_part = 152 if method == "udh16" else 153
    text = "a" * (per_part - 1) + ext + "b" * 20
    message = segment_text(text, ref=3, method=method)
    assert len(text_of(message.segments[0])) == per_part - 1
    assert text_of(message.segments[1])[0] == ESC
    assert joined_text(message) == text


def test_emoji_at_ucs2_boundary_moves_whole() -> None:
    text = "ж" * 66 + "😀" + "ж" * 10  # the emoji's high surrogate would be unit 67
    message = segment_text(text, ref=3)
    first, second = message.segments
    assert len(text_of(first)) == 132  # 66 units: the part does not end on a high surrogate
    assert text_of(second)[:4] == "😀".encode("utf-16-be")
    assert joined_text(message) == text
    assert message.units == 78


def test_emoji_ending_exactly_at_ucs2_boundary_stays() -> None:
    text = "ж" * 65 + "😀" + "ж" * 10  # the emoji is units 66-67
    first, _second = segment_text(text, ref=3).segments
    assert len(text_of(first)) == 134
    assert text_of(first)[-4:] == "😀".encode("utf-16-be")


def test_emoji_at_udh16_boundary() -> None:
    text = "ж" * 65 + "😀" + "ж" * 10  # units 66-67: over the 66-unit udh16 part
    first, second = segment_text(text, ref=3, method="udh16").segments
    assert len(text_of(first)) == 130
    assert text_of(second)[:4] == "😀".encode("utf-16-be")


def test_all_emoji_text() -> None:
    text = "😀" * 40  # 80 units: parts of 33 emoji (66 units), then 7
    message = segment_text(text, ref=3)
    assert [len(text_of(s)) for s in message.segments] == [132, 28]
    assert joined_text(message) == text


# --- properties ----------------------------------------------------------------------------------

gsm_texts = st.text(alphabet=st.sampled_from(GSM_CHARS), max_size=1200)
bmp_texts = st.text(alphabet=st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), max_size=500)
emoji_texts = st.text(
    alphabet=st.one_of(st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF), st.sampled_from("aж€ ")),
    max_size=300,
)
latin1_texts = st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=900)
smart_texts = st.text(alphabet=st.sampled_from(GSM_CHARS + "".join(_SMART_CHARS) + "ж😀"), max_size=600)


@settings(max_examples=300)
@given(
    text=st.one_of(gsm_texts, bmp_texts, emoji_texts, latin1_texts, smart_texts),
    method=st.sampled_from(["udh8", "udh16", "sar", "payload"]),
    latin1=st.booleans(),
    smart=st.booleans(),
    ref=st.integers(0, 0x1_FFFF),
)
@example(text="a" * 152 + "€" * 5, method="udh8", latin1=False, smart=False, ref=0)
@example(text="ж" * 66 + "😀" * 3, method="udh8", latin1=False, smart=False, ref=0)
def test_parts_join_back_and_fit(text: str, method: str, latin1: bool, smart: bool, ref: int) -> None:
    expected = smart_encode(text) if smart else text
    # The strategies stay far below 255 parts (at most 1200 characters).
    message = segment_text(text, method=method, ref=ref, latin1=latin1, smart=smart, max_segments=255)
    assert joined_text(message) == expected
    total = len(message.segments)
    for seq, segment in enumerate(message.segments, 1):
        assert (segment.seq, segment.total) == (seq, total)
        udh = udh_of(segment)
        data = text_of(segment)
        if message.data_coding == DC_UCS2:
            assert len(data) % 2 == 0
            assert not 0xD8 <= data[-2] <= 0xDB if data else True
        if message.data_coding == DC_GSM7 and data:
            assert data[-1] != ESC
        if Tag.MESSAGE_PAYLOAD in segment.tlvs:
            continue  # the SMSC splits message_payload
        if total == 1:
            assert udh == b"" and segment.tlvs == {} and segment.esm_class == 0
            assert air_octets(message.data_coding, 0, len(data)) <= 140
        else:
            # SAR parts must leave room for the UDH the SMSC adds (8-bit reference: 6 octets).
            udh_len = len(udh) if method != "sar" else 6
            assert air_octets(message.data_coding, udh_len, len(data)) <= 140
            if method == "udh16":
                assert udh == bytes((6, 8, 4)) + (ref & 0xFFFF).to_bytes(2, "big") + bytes((total, seq))
            elif method == "udh8":
                assert udh == bytes((5, 0, 3, ref & 0xFF, total, seq))


# --- interop with aiosmpplib 0.7.4 ---------------------------------------------------------------
# aiosmpplib has no stand-alone UDH parser, but SubmitSm/DeliverSm.from_pdu strips a concatenation UDH
# when UDHI is set and reports it as SAR OptionalParams; it also has a splitter, utils.split_sms_udh.
# Known disagreements (ours follows smpp-reference §8):
# - split_sms_udh counts GSM text in characters, not septets: an extension character counts 1, so its
#   parts can exceed 153 septets and a text of 81-160 '€' stays one "part". Compared on basic-alphabet
#   texts only.
# - split_sms_udh returns a single part with a length octet in front (encode_user_data); ours has none.
# - split_sms_udh picks the 16-bit UDH by itself when the reference is above 255; it has no Latin-1.
# - from_pdu reads the 16-bit reference with a 4-octet unpack ('!I' at offset 3), so its ref_num is
#   ref << 16 | total << 8 | seq; total and seq are right.
# - Its ESME sends SAR parts of up to 254 octets (split_sms) and relies on the SMSC to re-split.


def aio_decode(raw: bytes) -> aio.SubmitSm:
    header = aio.SmppMessage.parse_header(raw)
    return MESSAGE_TYPE_MAP[header.smpp_command].from_pdu(raw, header, "gsm0338", None)


def aio_sar(message: aio.SubmitSm) -> tuple[int, int, int]:
    params = {p.tag: p.value for p in message.optional_params or []}
    return params[SAR_MSG_REF_NUM], params[SAR_TOTAL_SEGMENTS], params[SAR_SEGMENT_SEQNUM]


def submit(message: SegmentedMessage, segment: Segment) -> bytes:
    return encode(
        SubmitSm(
            sequence_number=segment.seq,
            destination_addr="15551234567",
            esm_class=segment.esm_class,
            data_coding=message.data_coding,
            short_message=segment.payload,
            tlvs=segment.tlvs,
        )
    )


@pytest.mark.parametrize(
    "text",
    ["Hello {world} [x] ~ € | ^ \\ " * 12, "ж😀 Привет " * 20, "a" * 152 + "€" + "b" * 200],
)
def test_aiosmpplib_reads_our_udh8_parts(text: str) -> None:
    message = segment_text(text, ref=0xA7)
    decoded = [aio_decode(submit(message, s)) for s in message.segments]
    total = len(message.segments)
    assert [aio_sar(d) for d in decoded] == [(0xA7, total, seq) for seq in range(1, total + 1)]
    assert "".join(d.short_message for d in decoded) == text


def test_aiosmpplib_reads_our_udh16_parts_except_the_reference() -> None:
    text = "ж😀 Привет " * 20
    message = segment_text(text, ref=0x1234, method="udh16")
    decoded = [aio_decode(submit(message, s)) for s in message.segments]
    total = len(message.segments)
    # aiosmpplib's 16-bit reference read (see above) swallows total and seq into ref_num.
    assert [aio_sar(d) for d in decoded] == [
        (0x1234 << 16 | total << 8 | seq, total, seq) for seq in range(1, total + 1)
    ]
    assert "".join(d.short_message for d in decoded) == text


def test_aiosmpplib_reads_our_sar_parts() -> None:
    text = "SAR part text € " * 30
    message = segment_text(text, ref=0x0102, method="sar")
    decoded = [aio_decode(submit(message, s)) for s in message.segments]
    assert [d.get_segmentation_data() for d in decoded] == [(0x0102, seq, 4) for seq in range(1, 5)]
    assert "".join(d.short_message for d in decoded) == text


def test_aiosmpplib_reads_our_message_payload() -> None:
    text = "payload € " * 40
    message = segment_text(text, ref=1, method="payload")
    decoded = aio_decode(submit(message, message.segments[0]))
    assert decoded.short_message == ""
    assert decoded.message_payload == text


@settings(max_examples=200)
@given(
    text=st.one_of(
        st.text(alphabet=st.sampled_from(GSM_BASIC_CHARS), min_size=161, max_size=1000),
        st.text(
            alphabet=st.one_of(
                st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)),
                st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),
            ),
            min_size=30,
            max_size=400,
        ).filter(lambda t: not is_gsm7(t)),
    ),
    ref=st.integers(0, 0xFFFF),
)
@example(text="ж" * 66 + "😀" * 40, ref=7)
@example(text="a" * 919, ref=300)
def test_split_matches_aiosmpplib_split_sms_udh(text: str, ref: int) -> None:
    method = "udh16" if ref > 0xFF else "udh8"
    ours = segment_text(text, ref=ref, method=method, max_segments=255)
    theirs = split_sms_udh(text, csms_ref=ref)
    if len(ours.segments) == 1:
        # aiosmpplib prefixes a single part with a length octet (encode_user_data).
        assert len(theirs) == 1
        assert theirs[0][1:] == ours.segments[0].payload
        assert theirs[0][0] == (len(text) if ours.data_coding == DC_GSM7 else len(ours.segments[0].payload))
    else:
        assert [s.payload for s in ours.segments] == theirs


def test_aiosmpplib_split_disagrees_on_extension_chars() -> None:
    text = "€" * 100  # 200 septets: two parts for us, one 200-octet "part" for aiosmpplib
    assert len(segment_text(text, ref=1).segments) == 2
    assert len(split_sms_udh(text, csms_ref=1)) == 1
