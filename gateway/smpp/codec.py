"""SMPP 3.4 wire format: PDU objects to bytes and back, and stream framing.

Rule of this module: pure functions over bytes, no I/O. Decoding is tolerant where real SMSCs are
sloppy (responses with an error status and no body, over-long C-strings, truncated or unknown TLVs,
padding after the body) and strict where a mistake would corrupt data (sm_length beyond the body,
a C-string without its NUL). Every decoding failure is a `PduDecodeError` carrying the command_status
to answer with; nothing else escapes `decode`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from gateway.smpp.pdu import (
    RESPONSE_BIT,
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    CommandId,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Outbind,
    Pdu,
    Status,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
    UnknownPdu,
    _Bind,
    _BindResp,
    _ShortMessage,
)

HEADER = struct.Struct(">IIII")
_TLV_HEAD = struct.Struct(">HH")
MIN_PDU_LENGTH = 16
# 64 KiB message_payload plus the largest mandatory part; node-smpp's 16 KiB guard is too small.
MAX_PDU_LENGTH = 70_000


class SmppError(Exception):
    """Base of SMPP errors raised by this package."""


class PduEncodeError(SmppError, ValueError):
    """A PDU cannot be encoded: a field is too long or not ASCII. A local bug or bad input."""


class PduDecodeError(SmppError):
    """Bytes from the peer are not a valid PDU.

    `status` is the command_status to answer with (generic_nack or the matching response);
    `fatal` means the byte stream cannot be resynchronised and the connection must close.
    """

    def __init__(
        self,
        message: str,
        *,
        command_id: int = 0,
        sequence_number: int = 0,
        status: int = Status.RINVCMDLEN,
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.command_id = command_id
        self.sequence_number = sequence_number
        self.status = status
        self.fatal = fatal


# -- encoding -----------------------------------------------------------------------------------------


def _cstr(value: str, max_len: int, name: str) -> bytes:
    """C-octet string with its NUL; max_len counts the NUL as the spec does."""
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError as exc:
        raise PduEncodeError(f"{name} must be ASCII: {value!r}") from exc
    if len(raw) >= max_len:
        raise PduEncodeError(f"{name} is {len(raw)} octets, at most {max_len - 1} allowed")
    if b"\x00" in raw:  # a NUL would end the field early and shift every later field at the peer
        raise PduEncodeError(f"{name} must not contain NUL: {value!r}")
    return raw + b"\x00"


def _octets(*values: int) -> bytes:
    """One-octet integer fields."""
    for v in values:
        if not 0 <= v <= 0xFF:
            raise PduEncodeError(f"one-octet field value {v} out of range 0..255")
    return bytes(values)


def _time(value: str, name: str) -> bytes:
    if value and len(value) != 16:
        raise PduEncodeError(f"{name} must be empty or 16 characters (YYMMDDhhmmsstnnp), got {value!r}")
    return _cstr(value, 17, name)


def _tlvs(tlvs: dict[int, bytes]) -> bytes:
    if not tlvs:
        return b""
    out = bytearray()
    for tag, value in tlvs.items():
        if not 0 <= tag <= 0xFFFF or len(value) > 0xFFFF:
            raise PduEncodeError(f"TLV 0x{tag:04X} out of range ({len(value)} octets)")
        out += _TLV_HEAD.pack(tag, len(value))
        out += value
    return bytes(out)


def _body_bind(p: _Bind) -> bytes:
    return b"".join(
        (
            _cstr(p.system_id, 16, "system_id"),
            _cstr(p.password, 9, "password"),
            _cstr(p.system_type, 13, "system_type"),
            _octets(p.interface_version, p.addr_ton, p.addr_npi),
            _cstr(p.address_range, 41, "address_range"),
        )
    )


def _body_bind_resp(p: _BindResp) -> bytes:
    if p.command_status != 0 and not p.system_id and not p.tlvs:
        return b""  # error responses carry no body (spec §4.1.2)
    return _cstr(p.system_id, 16, "system_id") + _tlvs(p.tlvs)


def _body_short_message(p: _ShortMessage) -> bytes:
    sm = p.short_message
    if len(sm) > 254:
        raise PduEncodeError(f"short_message is {len(sm)} octets, at most 254 (use message_payload)")
    return b"".join(
        (
            _cstr(p.service_type, 6, "service_type"),
            _octets(p.source_addr_ton, p.source_addr_npi),
            _cstr(p.source_addr, 21, "source_addr"),
            _octets(p.dest_addr_ton, p.dest_addr_npi),
            _cstr(p.destination_addr, 21, "destination_addr"),
            _octets(p.esm_class, p.protocol_id, p.priority_flag),
            _time(p.schedule_delivery_time, "schedule_delivery_time"),
            _time(p.validity_period, "validity_period"),
            _octets(p.registered_delivery, p.replace_if_present_flag, p.data_coding, p.sm_default_msg_id, len(sm)),
            sm,
            _tlvs(p.tlvs),
        )
    )


def _body_data_sm(p: DataSm) -> bytes:
    return b"".join(
        (
            _cstr(p.service_type, 6, "service_type"),
            _octets(p.source_addr_ton, p.source_addr_npi),
            _cstr(p.source_addr, 65, "source_addr"),
            _octets(p.dest_addr_ton, p.dest_addr_npi),
            _cstr(p.destination_addr, 65, "destination_addr"),
            _octets(p.esm_class, p.registered_delivery, p.data_coding),
            _tlvs(p.tlvs),
        )
    )


def _body_message_id(p: SubmitSmResp | DataSmResp | DeliverSmResp) -> bytes:
    # An error response carries no body (spec §4.4.2); deliver_sm_resp's message_id is always NUL.
    if isinstance(p, DeliverSmResp):
        return b"\x00" + _tlvs(p.tlvs)
    if p.command_status != 0 and not p.message_id and not p.tlvs:
        return b""
    return _cstr(p.message_id, 65, "message_id") + _tlvs(p.tlvs)


def _body_outbind(p: Outbind) -> bytes:
    return _cstr(p.system_id, 16, "system_id") + _cstr(p.password, 9, "password")


def _body_empty(p: Pdu) -> bytes:
    return b""


_ENCODERS: dict[type[Pdu], Callable[[Pdu], bytes]] = {
    BindTransmitter: _body_bind,  # type: ignore[dict-item]
    BindReceiver: _body_bind,  # type: ignore[dict-item]
    BindTransceiver: _body_bind,  # type: ignore[dict-item]
    BindTransmitterResp: _body_bind_resp,  # type: ignore[dict-item]
    BindReceiverResp: _body_bind_resp,  # type: ignore[dict-item]
    BindTransceiverResp: _body_bind_resp,  # type: ignore[dict-item]
    Outbind: _body_outbind,  # type: ignore[dict-item]
    SubmitSm: _body_short_message,  # type: ignore[dict-item]
    DeliverSm: _body_short_message,  # type: ignore[dict-item]
    SubmitSmResp: _body_message_id,  # type: ignore[dict-item]
    DeliverSmResp: _body_message_id,  # type: ignore[dict-item]
    DataSm: _body_data_sm,  # type: ignore[dict-item]
    DataSmResp: _body_message_id,  # type: ignore[dict-item]
    Unbind: _body_empty,
    UnbindResp: _body_empty,
    EnquireLink: _body_empty,
    EnquireLinkResp: _body_empty,
    GenericNack: _body_empty,
}


def encode(pdu: Pdu, sequence_number: int | None = None) -> bytes:
    """Encode a PDU with its header; `sequence_number`, when given, replaces the PDU's own in the header (a
    session numbers a prepared PDU without copying it).

    Raises:
        PduEncodeError: a field does not fit its SMPP type (length, ASCII).
    """
    if isinstance(pdu, UnknownPdu):
        body = pdu.body
        command_id = pdu.raw_command_id
    else:
        body = _ENCODERS[type(pdu)](pdu)
        command_id = pdu.command_id
    seq = pdu.sequence_number if sequence_number is None else sequence_number
    if not 0 <= seq <= 0xFFFFFFFF:
        raise PduEncodeError(f"sequence_number {seq} out of range")
    if not 0 <= pdu.command_status <= 0xFFFFFFFF:
        raise PduEncodeError(f"command_status {pdu.command_status} out of range")
    return HEADER.pack(16 + len(body), command_id, pdu.command_status, seq) + body


# -- decoding -----------------------------------------------------------------------------------------


class _Reader:
    """Cursor over a PDU body. Raises `_Short` when a mandatory field runs past the end."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def cstr(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise _Short("C-octet string without its NUL terminator")
        # Decode as Latin-1 so any octet survives; over-long values from sloppy SMSCs are accepted.
        value = self.data[self.pos : end].decode("latin-1")
        self.pos = end + 1
        return value

    def octet(self) -> int:
        if self.pos >= len(self.data):
            raise _Short("body ends inside a mandatory field")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def octets(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Short(f"field of {n} octets runs past the end of the body")
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value

    def tlvs(self) -> dict[int, bytes]:
        """Remaining TLVs. Unknown tags are kept; a truncated tail (padding, a broken vendor TLV) is
        ignored rather than failing the whole PDU, as Jasmin does."""
        out: dict[int, bytes] = {}
        data = self.data
        pos = self.pos
        end = len(data)
        # Where the trailing NUL padding starts, found once: testing "only NULs from here on" at every tag-0 TLV
        # copied and scanned the rest of the body each time, quadratic (seconds for one 70 KB PDU of empty TLVs).
        padding_from = len(data.rstrip(b"\x00"))
        while pos + 4 <= end:
            tag, length = _TLV_HEAD.unpack_from(data, pos)
            if tag == 0 and pos >= padding_from:  # NUL padding after the body, not a TLV
                break
            if pos + 4 + length > end:
                break
            out[tag] = data[pos + 4 : pos + 4 + length]
            pos += 4 + length
        self.pos = end
        return out


class _Short(Exception):
    pass


def _dec_bind(cls: type[_Bind], r: _Reader) -> dict[str, object]:
    return {
        "system_id": r.cstr(),
        "password": r.cstr(),
        "system_type": r.cstr(),
        "interface_version": r.octet(),
        "addr_ton": r.octet(),
        "addr_npi": r.octet(),
        "address_range": r.cstr(),
    }


def _dec_bind_resp(cls: type[Pdu], r: _Reader) -> dict[str, object]:
    if r.at_end:  # error responses have no body (spec §4.1.2)
        return {}
    return {"system_id": r.cstr(), "tlvs": r.tlvs()}


def _dec_short_message(cls: type[Pdu], r: _Reader) -> dict[str, object]:
    fields: dict[str, object] = {
        "service_type": r.cstr(),
        "source_addr_ton": r.octet(),
        "source_addr_npi": r.octet(),
        "source_addr": r.cstr(),
        "dest_addr_ton": r.octet(),
        "dest_addr_npi": r.octet(),
        "destination_addr": r.cstr(),
        "esm_class": r.octet(),
        "protocol_id": r.octet(),
        "priority_flag": r.octet(),
        "schedule_delivery_time": r.cstr(),
        "validity_period": r.cstr(),
        "registered_delivery": r.octet(),
        "replace_if_present_flag": r.octet(),
        "data_coding": r.octet(),
        "sm_default_msg_id": r.octet(),
    }
    sm_length = r.octet()
    try:
        fields["short_message"] = r.octets(sm_length)
    except _Short as exc:
        raise PduDecodeError(
            f"sm_length {sm_length} runs past the end of the body", status=Status.RINVMSGLEN
        ) from exc
    fields["tlvs"] = r.tlvs()
    return fields


def _dec_data_sm(cls: type[Pdu], r: _Reader) -> dict[str, object]:
    return {
        "service_type": r.cstr(),
        "source_addr_ton": r.octet(),
        "source_addr_npi": r.octet(),
        "source_addr": r.cstr(),
        "dest_addr_ton": r.octet(),
        "dest_addr_npi": r.octet(),
        "destination_addr": r.cstr(),
        "esm_class": r.octet(),
        "registered_delivery": r.octet(),
        "data_coding": r.octet(),
        "tlvs": r.tlvs(),
    }


def _dec_message_id(cls: type[Pdu], r: _Reader) -> dict[str, object]:
    if r.at_end:  # error responses have no body
        return {}
    return {"message_id": r.cstr(), "tlvs": r.tlvs()}


def _dec_outbind(cls: type[Pdu], r: _Reader) -> dict[str, object]:
    return {"system_id": r.cstr(), "password": r.cstr()}


def _dec_empty(cls: type[Pdu], r: _Reader) -> dict[str, object]:
    # Header-only PDUs: trailing octets are padding from a sloppy peer; ignore them.
    return {}


_DECODERS: dict[int, tuple[type[Pdu], Callable[[type[Pdu], _Reader], dict[str, object]]]] = {
    CommandId.BIND_TRANSMITTER: (BindTransmitter, _dec_bind),  # type: ignore[dict-item]
    CommandId.BIND_RECEIVER: (BindReceiver, _dec_bind),  # type: ignore[dict-item]
    CommandId.BIND_TRANSCEIVER: (BindTransceiver, _dec_bind),  # type: ignore[dict-item]
    CommandId.BIND_TRANSMITTER_RESP: (BindTransmitterResp, _dec_bind_resp),
    CommandId.BIND_RECEIVER_RESP: (BindReceiverResp, _dec_bind_resp),
    CommandId.BIND_TRANSCEIVER_RESP: (BindTransceiverResp, _dec_bind_resp),
    CommandId.OUTBIND: (Outbind, _dec_outbind),
    CommandId.SUBMIT_SM: (SubmitSm, _dec_short_message),
    CommandId.DELIVER_SM: (DeliverSm, _dec_short_message),
    CommandId.SUBMIT_SM_RESP: (SubmitSmResp, _dec_message_id),
    CommandId.DELIVER_SM_RESP: (DeliverSmResp, _dec_message_id),
    CommandId.DATA_SM: (DataSm, _dec_data_sm),
    CommandId.DATA_SM_RESP: (DataSmResp, _dec_message_id),
    CommandId.UNBIND: (Unbind, _dec_empty),
    CommandId.UNBIND_RESP: (UnbindResp, _dec_empty),
    CommandId.ENQUIRE_LINK: (EnquireLink, _dec_empty),
    CommandId.ENQUIRE_LINK_RESP: (EnquireLinkResp, _dec_empty),
    CommandId.GENERIC_NACK: (GenericNack, _dec_empty),
}


def decode(frame: bytes) -> Pdu:
    """Decode one complete PDU (header included), as cut by `Framer`.

    Unknown command ids decode to `UnknownPdu`. Responses with a non-zero status may lack a body.

    Raises:
        PduDecodeError: the frame is not a valid PDU; its `status` says what to answer.
    """
    if len(frame) < MIN_PDU_LENGTH:
        raise PduDecodeError(f"PDU of {len(frame)} octets is shorter than its header", fatal=True)
    command_length, command_id, command_status, sequence_number = HEADER.unpack_from(frame, 0)
    if command_length != len(frame):
        raise PduDecodeError(
            f"command_length {command_length} does not match the frame of {len(frame)} octets",
            command_id=command_id,
            sequence_number=sequence_number,
            fatal=True,
        )
    entry = _DECODERS.get(command_id)
    if entry is None:
        return UnknownPdu(
            sequence_number=sequence_number,
            command_status=command_status,
            raw_command_id=command_id,
            body=bytes(frame[16:]),
        )
    cls, decoder = entry
    reader = _Reader(bytes(frame[16:]))
    try:
        fields = decoder(cls, reader)
    except _Short as exc:
        raise PduDecodeError(
            f"{CommandId(command_id).name.lower()}: {exc}",
            command_id=command_id,
            sequence_number=sequence_number,
            status=Status.RINVCMDLEN,
        ) from exc
    except PduDecodeError as exc:
        exc.command_id = command_id
        exc.sequence_number = sequence_number
        raise
    return cls(sequence_number=sequence_number, command_status=command_status, **fields)  # type: ignore[arg-type]


class Framer:
    """Cuts a TCP byte stream into PDU frames.

    After a framing error (command_length below 16 or above the guard) the stream cannot be
    resynchronised: the error is fatal and the buffer is discarded.
    """

    __slots__ = ("_buffer", "_error", "max_length")

    def __init__(self, max_length: int = MAX_PDU_LENGTH) -> None:
        self._buffer = bytearray()
        self._error: PduDecodeError | None = None
        self.max_length = max_length

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every complete frame now available, in order.

        Good frames cut before a framing error are returned first; the error is raised by the next call
        (feed(b"") is enough), so a response that shares a TCP read with garbage is not lost.

        Raises:
            PduDecodeError: fatal framing error (bad command_length).
        """
        if self._error is not None:
            raise self._error
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            length = int.from_bytes(buf[pos : pos + 4], "big")
            if length < MIN_PDU_LENGTH or length > self.max_length:
                seq = int.from_bytes(buf[pos + 12 : pos + 16], "big") if end - pos >= 16 else 0
                cid = int.from_bytes(buf[pos + 4 : pos + 8], "big") if end - pos >= 8 else 0
                self._buffer = bytearray()
                self._error = PduDecodeError(
                    f"command_length {length} outside {MIN_PDU_LENGTH}..{self.max_length}",
                    command_id=cid,
                    sequence_number=seq,
                    status=Status.RINVCMDLEN,
                    fatal=True,
                )
                if frames:
                    return frames
                raise self._error
            if end - pos < length:
                break
            frames.append(bytes(buf[pos : pos + length]))
            pos += length
        if pos:
            del buf[:pos]
        return frames

    @property
    def failed(self) -> bool:
        """A framing error is pending: the stream is unusable."""
        return self._error is not None

    @property
    def buffered(self) -> int:
        """Octets of an incomplete frame waiting for more data."""
        return len(self._buffer)

    @property
    def head(self) -> bytes:
        """The first octets (up to 4: its command_length) of the incomplete frame waiting for more data."""
        return bytes(self._buffer[:4])


def is_response_id(command_id: int) -> bool:
    """True when the command id has the response bit set."""
    return bool(command_id & RESPONSE_BIT)
