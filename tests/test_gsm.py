"""GSM 03.38 / Latin-1 / UCS-2 text encodings for short_message."""

from __future__ import annotations

import re

import pytest
from aiosmpplib.codec import (
    GSM_BASIC_DECODE_MAP,
    GSM_EXTENDED_DECODE_MAP,
    GSM7BitCodec,
    GSM7BitPackedCodec,
)
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.smpp.gsm import (
    PART_LIMITS_UDH8,
    PART_LIMITS_UDH16,
    SINGLE_LIMITS,
    EncodedText,
    UnencodableError,
    decode_short_message,
    encode_text,
    fits_single,
    gsm7_decode,
    gsm7_encode,
    gsm7_pack,
    gsm7_septets,
    gsm7_unpack,
    is_gsm7,
)

# The table of smpp-reference §8, typed in independently of gateway/smpp/gsm.py.
REFERENCE_ROWS = {
    0x00: "@ £ $ ¥ è é ù ì ò Ç LF Ø ø CR Å å",
    0x10: "Δ _ Φ Γ Λ Ω Π Ψ Σ Θ Ξ ESC Æ æ ß É",
    0x20: "SP ! \" # ¤ % & ' ( ) * + , - . /",
    0x30: "0 1 2 3 4 5 6 7 8 9 : ; < = > ?",
    0x40: "¡ A B C D E F G H I J K L M N O",
    0x50: "P Q R S T U V W X Y Z Ä Ö Ñ Ü §",
    0x60: "¿ a b c d e f g h i j k l m n o",
    0x70: "p q r s t u v w x y z ä ö ñ ü à",
}
NAMED = {"LF": "\n", "CR": "\r", "SP": " "}
REFERENCE_BASIC = {
    row + col: NAMED.get(name, name)
    for row, names in REFERENCE_ROWS.items()
    for col, name in enumerate(names.split())
    if name != "ESC"
}
REFERENCE_EXTENSION = {
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
GSM_CHARS = sorted(set(REFERENCE_BASIC.values()) | set(REFERENCE_EXTENSION.values()))
gsm_text = st.text(alphabet=st.sampled_from(GSM_CHARS))

AIO = GSM7BitCodec()
AIO_PACKED = GSM7BitPackedCodec()


# --- the tables ---------------------------------------------------------------------------------


def test_reference_table_is_complete() -> None:
    assert len(REFERENCE_BASIC) == 127
    assert len(GSM_CHARS) == 137


@pytest.mark.parametrize(("code", "char"), sorted(REFERENCE_BASIC.items()))
def test_basic_table_matches_reference(code: int, char: str) -> None:
    assert gsm7_encode(char) == bytes([code])
    assert gsm7_decode(bytes([code])) == char


@pytest.mark.parametrize(("code", "char"), sorted(REFERENCE_EXTENSION.items()))
def test_extension_table_matches_reference(code: int, char: str) -> None:
    assert gsm7_encode(char) == bytes([0x1B, code])
    assert gsm7_decode(bytes([0x1B, code])) == char
    assert gsm7_septets(char) == 2


def test_aiosmpplib_tables_agree_with_reference() -> None:
    # aiosmpplib is an independent transcription of 23.038: if it ever disagrees, one of us is wrong.
    assert GSM_BASIC_DECODE_MAP == REFERENCE_BASIC
    assert GSM_EXTENDED_DECODE_MAP == REFERENCE_EXTENSION


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@", b"\x00"),
        ("$", b"\x02"),
        ("_", b"\x11"),
        ("Hello", b"Hello"),
        ("a€b", b"a\x1b\x65b"),
        ("[1]", b"\x1b\x3c1\x1b\x3e"),
        ("£5 @ ¿?", b"\x015 \x00 \x60?"),
        ("", b""),
    ],
)
def test_encode_cases(text: str, expected: bytes) -> None:
    assert gsm7_encode(text) == expected


@pytest.mark.parametrize(
    ("text", "char", "index"),
    [
        ("a`b", "`", 1),  # the backtick is NOT in GSM 03.38 (smpplib wrongly puts it at 0x5F)
        ("€€`", "`", 2),  # the index is into the text, not into the ESC-expanded output
        ("\x1b", "\x1b", 0),  # ESC is not a character
        ("tab\there", "\t", 3),
        ("café ç", "ç", 5),  # Ç is encodable, ç is not
        ("hi 😀", "😀", 3),
        ("naïve", "ï", 2),
    ],
)
def test_encode_rejects_with_first_bad_char_and_index(text: str, char: str, index: int) -> None:
    with pytest.raises(UnencodableError) as info:
        gsm7_encode(text)
    assert info.value.char == char
    assert info.value.index == index
    assert f"index {index}" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", ""),
        (b"Hello", "Hello"),
        (b"\x1b\x65 5", "€ 5"),
        (b"\x1b\x41", "A"),  # unknown escape: fall back to the basic table
        (b"\x1b\x00", "@"),
        (b"ab\x1b", "ab"),  # trailing lone ESC is dropped
        (b"\x1b", ""),
        (b"a\x1b\x1bb", "a b"),  # ESC ESC: reserved extension of the extension, shown as a space
        (b"a\x80b\xff", "a\ufffdb\ufffd"),  # octets above 0x7F are not GSM-7
        (b"\x1b\x80", "\ufffd"),
        (b"\x1b\x0d", "\r"),
    ],
)
def test_decode_is_tolerant(data: bytes, expected: str) -> None:
    assert gsm7_decode(data) == expected


@pytest.mark.parametrize(
    ("text", "gsm", "septets"),
    [
        ("", True, 0),
        ("Hello world", True, 11),
        ("€", True, 2),
        ("{[|]}", True, 10),
        ("Δ test §", True, 8),
        ("\n\r\f", True, 4),
        ("`", False, None),
        ("ç", False, None),
        ("Привет", False, None),
        ("😀", False, None),
    ],
)
def test_is_gsm7_and_septets(text: str, gsm: bool, septets: int | None) -> None:
    assert is_gsm7(text) is gsm
    if septets is None:
        with pytest.raises(UnencodableError):
            gsm7_septets(text)
    else:
        assert gsm7_septets(text) == septets


# --- choosing an encoding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "latin1", "data_coding", "payload", "units"),
    [
        ("Hi €", False, 0x00, b"Hi \x1b\x65", 5),
        ("Hi €", True, 0x00, b"Hi \x1b\x65", 5),  # GSM-7 first even when Latin-1 is allowed
        ("ça", True, 0x03, b"\xe7a", 2),
        ("ça", False, 0x08, b"\x00\xe7\x00a", 2),
        ("ç€", True, 0x08, b"\x00\xe7\x20\xac", 2),  # neither GSM-7 nor Latin-1
        ("Привет", False, 0x08, "Привет".encode("utf-16-be"), 6),
        ("😀", False, 0x08, b"\xd8\x3d\xde\x00", 2),  # surrogate pair: 2 units
        ("a😀b", True, 0x08, b"\x00a\xd8\x3d\xde\x00\x00b", 4),
        ("", False, 0x00, b"", 0),
    ],
)
def test_encode_text(text: str, latin1: bool, data_coding: int, payload: bytes, units: int) -> None:
    assert encode_text(text, latin1=latin1) == EncodedText(data_coding, payload, units)


def test_encode_text_rejects_lone_surrogate() -> None:
    with pytest.raises(UnencodableError) as info:
        encode_text("ok\ud83d")
    assert info.value.index == 2


def test_encoded_text_is_frozen() -> None:
    encoded = encode_text("x")
    with pytest.raises(AttributeError):
        encoded.units = 3  # type: ignore[misc]


def test_limit_constants_follow_reference() -> None:
    assert SINGLE_LIMITS == {0x00: 160, 0x03: 140, 0x08: 70}
    assert PART_LIMITS_UDH8 == {0x00: 153, 0x03: 134, 0x08: 67}
    assert PART_LIMITS_UDH16 == {0x00: 152, 0x03: 133, 0x08: 66}


@pytest.mark.parametrize(
    ("text", "latin1", "fits"),
    [
        ("a" * 160, False, True),
        ("a" * 161, False, False),
        ("a" * 159 + "€", False, False),  # 161 septets
        ("a" * 158 + "€", False, True),
        ("ç" * 140, True, True),
        ("ç" * 141, True, False),
        ("ç" * 70, False, True),
        ("ç" * 71, False, False),
        ("ç" * 68 + "😀", False, True),  # 70 units
        ("ç" * 69 + "😀", False, False),  # 71 units
    ],
)
def test_fits_single(text: str, latin1: bool, fits: bool) -> None:
    assert fits_single(encode_text(text, latin1=latin1)) is fits


def test_fits_single_unknown_coding_counts_octets() -> None:
    assert fits_single(EncodedText(0x04, b"x" * 140, 140))
    assert not fits_single(EncodedText(0x04, b"x" * 141, 141))


# --- decoding received messages -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "data_coding", "expected"),
    [
        (b"\x00\x1b\x65", 0x00, "@€"),
        (b"\x00\x1b\x65", 0x10, "@€"),
        (b"\x00\x1b\x65", 0x13, "@€"),
        (b"\x00\x1b\x65", 0xF0, "@€"),
        (b"\x00\x1b\x65", 0xF3, "@€"),
        (b"\x00\x1b\x65", 0xC8, "@€"),
        (b"Hi \xe9", 0x01, "Hi é"),  # IA5 with a stray 8-bit octet still decodes
        (b"\xe7a", 0x03, "ça"),
        (b"\x00\xff", 0x02, "\x00\xff"),
        (b"\x00\xff", 0x04, "\x00\xff"),
        (b"\x00\xff", 0xF4, "\x00\xff"),
        (b"\x00\xff", 0xF7, "\x00\xff"),
        (b"\x00\xff", 0x14, "\x00\xff"),
        (b"\x00a\xd8\x3d\xde\x00", 0x08, "a😀"),
        (b"\x00a\xd8\x3d\xde\x00", 0x18, "a😀"),
        (b"\x00a\xd8\x3d\xde\x00", 0x1B, "a😀"),
        (b"\x00a", 0xE0, "a"),
        (b"\xd8\x3d\x00a", 0x08, "\ufffda"),  # lone high surrogate
        (b"\xde\x00", 0x08, "\ufffd"),  # lone low surrogate
        (b"\x00a\x00", 0x08, "a\ufffd"),  # odd length
        (b"\xbf\xd0", 0x06, "Па"),
        (b"\xe0\xa1", 0x07, "א\ufffd"),  # 0xA1 is unassigned in ISO-8859-8
        (b"\x1b$B$3$s\x1b(B", 0x0A, "こん"),
        (b"\xc0", 0x05, "À"),  # JIS: left as Latin-1
        (b"\xc0", 0x0B, "À"),  # reserved
        (b"\xc0", 0x1C, "À"),  # reserved GSM alphabet bits
        (b"\xc0", 300, "À"),  # out of range
        (b"\xc0", -1, "À"),
    ],
)
def test_decode_short_message(data: bytes, data_coding: int, expected: str) -> None:
    assert decode_short_message(data, data_coding) == expected


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=255))
@example(b"\x1b", 0)
@example(b"\xd8\x00", 8)
@example(b"\x00", 8)
@example(b"\x1b$B\xff", 0x0A)
def test_decode_short_message_never_raises(data: bytes, data_coding: int) -> None:
    assert isinstance(decode_short_message(data, data_coding), str)


@given(st.binary(max_size=300).map(lambda data: data[: len(data) & ~1]))
def test_ucs2_decode_equals_surrogatepass_then_replace(data: bytes) -> None:
    literal = _LONE_SURROGATE.sub("\ufffd", data.decode("utf-16-be", "surrogatepass"))
    assert decode_short_message(data, 0x08) == literal


# --- properties -----------------------------------------------------------------------------------


@given(gsm_text)
def test_gsm7_round_trip(text: str) -> None:
    encoded = gsm7_encode(text)
    assert gsm7_decode(encoded) == text
    assert decode_short_message(encoded, 0x00) == text
    assert is_gsm7(text)


@given(gsm_text)
def test_septets_count_extension_chars_twice(text: str) -> None:
    extension = sum(char in REFERENCE_EXTENSION.values() for char in text)
    assert gsm7_septets(text) == len(text) + extension == len(gsm7_encode(text))
    assert encode_text(text).units == gsm7_septets(text)


@given(gsm_text)
def test_encode_matches_aiosmpplib(text: str) -> None:
    assert gsm7_encode(text) == AIO.encode(text)[0]


@given(gsm_text)
def test_decode_matches_aiosmpplib_on_valid_data(text: str) -> None:
    data = AIO.encode(text)[0]
    assert gsm7_decode(data) == AIO.decode(data)[0]


@given(st.text(max_size=200))
def test_encode_agrees_with_is_gsm7(text: str) -> None:
    if is_gsm7(text):
        assert gsm7_decode(gsm7_encode(text)) == text
    else:
        with pytest.raises(UnencodableError) as info:
            gsm7_encode(text)
        bad = info.value.index
        assert is_gsm7(text[:bad]) and not is_gsm7(text[bad])


@given(st.text(max_size=100))
def test_ucs2_units_are_utf16_code_units(text: str) -> None:
    try:
        encoded = encode_text(text)
    except UnencodableError:
        assert _LONE_SURROGATE.search(text)
        return
    if encoded.data_coding == 0x08:
        non_bmp = sum(ord(char) > 0xFFFF for char in text)
        assert encoded.units == len(text) + non_bmp == len(encoded.payload) // 2
        assert decode_short_message(encoded.payload, 0x08) == text


@given(st.lists(st.sampled_from("😀🎉👍🏽𝄞"), min_size=1, max_size=40))
def test_ucs2_emoji_count_two_units(chars: list[str]) -> None:
    assert encode_text("".join(chars)).units == 2 * len(chars)


# --- packed 7-bit -----------------------------------------------------------------------------------


def naive_pack(septets: bytes) -> bytes:
    """Bit-by-bit reference packer (3GPP TS 23.038), with CR fill for 7 spare bits."""
    if len(septets) % 8 == 7:
        septets += b"\r"
    bits = 0
    for index, septet in enumerate(septets):
        bits |= (septet & 0x7F) << (7 * index)
    return bits.to_bytes((7 * len(septets) + 7) // 8, "little")


@pytest.mark.parametrize(
    ("text", "packed"),
    [
        ("", ""),
        ("a", "61"),
        ("hellohello", "e8329bfd4697d9ec37"),  # the classic packing example
        ("1234567", "31d98c56b3dd1a"),  # 7 septets: CR fills the last 7 bits, not '@'
        ("12345678", "31d98c56b3dd70"),
    ],
)
def test_pack_cases(text: str, packed: str) -> None:
    septets = gsm7_encode(text)
    assert gsm7_pack(septets).hex() == packed
    assert gsm7_unpack(bytes.fromhex(packed)) == septets


@given(st.binary(max_size=400).map(lambda data: bytes(octet & 0x7F for octet in data)))
def test_pack_matches_naive_and_unpacks_with_count(septets: bytes) -> None:
    packed = gsm7_pack(septets)
    assert packed == naive_pack(septets)
    assert gsm7_unpack(packed, len(septets)) == septets


@given(gsm_text)
def test_pack_round_trip_without_count(text: str) -> None:
    septets = gsm7_encode(text)
    # Without a count, a real CR or '@' in the 8n-th septet is indistinguishable from padding.
    ambiguous = len(septets) % 8 == 0 and septets[-1:] in (b"\r", b"\x00")
    if not ambiguous:
        assert gsm7_unpack(gsm7_pack(septets)) == septets


@given(gsm_text.filter(lambda text: len(gsm7_encode(text)) % 8 != 7))
def test_pack_matches_aiosmpplib(text: str) -> None:
    # aiosmpplib zero-fills 7 spare bits instead of using CR, so leave those lengths out.
    assert gsm7_pack(gsm7_encode(text)) == AIO_PACKED.encode(text)[0]


def test_pack_does_not_mutate_bytearray_input() -> None:
    septets = bytearray(b"1234567")
    gsm7_pack(septets)
    assert septets == bytearray(b"1234567")


@given(st.binary(max_size=300), st.one_of(st.none(), st.integers(min_value=-5, max_value=400)))
def test_unpack_never_raises(data: bytes, count: int | None) -> None:
    septets = gsm7_unpack(data, count)
    assert all(septet < 0x80 for septet in septets)
    assert len(septets) <= len(data) * 8 // 7
