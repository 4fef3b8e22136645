"""SMPP 3.4 PDUs as small dataclasses, plus the protocol's numeric constants.

Rule of this module: no I/O and no encoding logic; it only names things. `codec.py` turns these
objects into bytes and back. Unknown command ids, command_status values and TLV tags are kept as
plain integers so nothing a real SMSC sends can make us drop a bind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar


class CommandId(IntEnum):
    """Command ids of spec §5.1.2 (Table 5-1)."""

    GENERIC_NACK = 0x80000000
    BIND_RECEIVER = 0x00000001
    BIND_RECEIVER_RESP = 0x80000001
    BIND_TRANSMITTER = 0x00000002
    BIND_TRANSMITTER_RESP = 0x80000002
    QUERY_SM = 0x00000003
    QUERY_SM_RESP = 0x80000003
    SUBMIT_SM = 0x00000004
    SUBMIT_SM_RESP = 0x80000004
    DELIVER_SM = 0x00000005
    DELIVER_SM_RESP = 0x80000005
    UNBIND = 0x00000006
    UNBIND_RESP = 0x80000006
    REPLACE_SM = 0x00000007
    REPLACE_SM_RESP = 0x80000007
    CANCEL_SM = 0x00000008
    CANCEL_SM_RESP = 0x80000008
    BIND_TRANSCEIVER = 0x00000009
    BIND_TRANSCEIVER_RESP = 0x80000009
    OUTBIND = 0x0000000B
    ENQUIRE_LINK = 0x00000015
    ENQUIRE_LINK_RESP = 0x80000015
    SUBMIT_MULTI = 0x00000021
    SUBMIT_MULTI_RESP = 0x80000021
    ALERT_NOTIFICATION = 0x00000102
    DATA_SM = 0x00000103
    DATA_SM_RESP = 0x80000103


RESPONSE_BIT = 0x80000000


class Status(IntEnum):
    """command_status values an ESME meets (spec §5.1.3). Other values stay plain ints."""

    ROK = 0x00
    RINVMSGLEN = 0x01
    RINVCMDLEN = 0x02
    RINVCMDID = 0x03
    RINVBNDSTS = 0x04
    RALYBND = 0x05
    RINVPRTFLG = 0x06
    RINVREGDLVFLG = 0x07
    RSYSERR = 0x08
    RINVSRCADR = 0x0A
    RINVDSTADR = 0x0B
    RINVMSGID = 0x0C
    RBINDFAIL = 0x0D
    RINVPASWD = 0x0E
    RINVSYSID = 0x0F
    RCANCELFAIL = 0x11
    RREPLACEFAIL = 0x13
    RMSGQFUL = 0x14
    RINVSERTYP = 0x15
    RINVESMCLASS = 0x43
    RSUBMITFAIL = 0x45
    RINVSRCTON = 0x48
    RINVSRCNPI = 0x49
    RINVDSTTON = 0x50
    RINVDSTNPI = 0x51
    RINVSYSTYP = 0x53
    RTHROTTLED = 0x58
    RINVSCHED = 0x61
    RINVEXPIRY = 0x62
    RX_T_APPN = 0x64
    RX_P_APPN = 0x65
    RX_R_APPN = 0x66
    RINVOPTPARSTREAM = 0xC0
    ROPTPARNOTALLWD = 0xC1
    RINVPARLEN = 0xC2
    RDELIVERYFAILURE = 0xFE
    RUNKNOWNERR = 0xFF


def status_name(status: int) -> str:
    """A readable name for a command_status, e.g. ``ESME_RTHROTTLED`` or ``0x00000401``."""
    try:
        return "ESME_" + Status(status).name
    except ValueError:
        return f"0x{status:08X}"


class Tag(IntEnum):
    """TLV tags a gateway meets (spec §5.3.2)."""

    DEST_ADDR_SUBUNIT = 0x0005
    SOURCE_ADDR_SUBUNIT = 0x000D
    QOS_TIME_TO_LIVE = 0x0017
    PAYLOAD_TYPE = 0x0019
    ADDITIONAL_STATUS_INFO_TEXT = 0x001D
    RECEIPTED_MESSAGE_ID = 0x001E
    PRIVACY_INDICATOR = 0x0201
    USER_MESSAGE_REFERENCE = 0x0204
    SOURCE_PORT = 0x020A
    DESTINATION_PORT = 0x020B
    SAR_MSG_REF_NUM = 0x020C
    LANGUAGE_INDICATOR = 0x020D
    SAR_TOTAL_SEGMENTS = 0x020E
    SAR_SEGMENT_SEQNUM = 0x020F
    SC_INTERFACE_VERSION = 0x0210
    CALLBACK_NUM = 0x0381
    DPF_RESULT = 0x0420
    SET_DPF = 0x0421
    MS_AVAILABILITY_STATUS = 0x0422
    NETWORK_ERROR_CODE = 0x0423
    MESSAGE_PAYLOAD = 0x0424
    DELIVERY_FAILURE_REASON = 0x0425
    MORE_MESSAGES_TO_SEND = 0x0426
    MESSAGE_STATE = 0x0427
    USSD_SERVICE_OP = 0x0501


class EsmClass:
    """esm_class bits (spec §5.2.12)."""

    TYPE_MASK = 0x3C
    DELIVERY_RECEIPT = 0x04
    INTERMEDIATE_NOTIFICATION = 0x20
    UDHI = 0x40


INTERFACE_VERSION_34 = 0x34


def is_receipt_class(esm_class: int) -> bool:
    """esm_class of an SMSC delivery receipt or intermediate notification (mask 0x3C, spec §5.2.12)."""
    return esm_class & EsmClass.TYPE_MASK in (EsmClass.DELIVERY_RECEIPT, EsmClass.INTERMEDIATE_NOTIFICATION)


@dataclass(frozen=True, slots=True)
class Pdu:
    """Base of every PDU: the header fields that are not derived from the body."""

    command_id: ClassVar[int] = 0
    sequence_number: int = 0
    command_status: int = 0

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)


@dataclass(frozen=True, slots=True)
class _TlvMixin(Pdu):
    tlvs: dict[int, bytes] = field(default_factory=dict)

    def tlv_int(self, tag: int) -> int | None:
        """The TLV value as an unsigned big-endian integer, or None when absent or empty."""
        raw = self.tlvs.get(tag)
        if not raw:
            return None
        return int.from_bytes(raw, "big")

    def tlv_str(self, tag: int) -> str | None:
        """The TLV value as text (a C-octet string: trailing NULs dropped), or None when absent."""
        raw = self.tlvs.get(tag)
        if raw is None:
            return None
        return raw.split(b"\x00", 1)[0].decode("latin-1")


# -- session management ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Bind(Pdu):
    system_id: str = ""
    password: str = ""
    system_type: str = ""
    interface_version: int = INTERFACE_VERSION_34
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""

    def __repr__(self) -> str:  # never show the password in logs
        return (
            f"{type(self).__name__}(sequence_number={self.sequence_number}, system_id={self.system_id!r}, "
            f"system_type={self.system_type!r}, interface_version=0x{self.interface_version:02X})"
        )


@dataclass(frozen=True, slots=True, repr=False)
class BindTransmitter(_Bind):
    command_id: ClassVar[int] = CommandId.BIND_TRANSMITTER


@dataclass(frozen=True, slots=True, repr=False)
class BindReceiver(_Bind):
    command_id: ClassVar[int] = CommandId.BIND_RECEIVER


@dataclass(frozen=True, slots=True, repr=False)
class BindTransceiver(_Bind):
    command_id: ClassVar[int] = CommandId.BIND_TRANSCEIVER


@dataclass(frozen=True, slots=True)
class _BindResp(_TlvMixin):
    system_id: str = ""


@dataclass(frozen=True, slots=True)
class BindTransmitterResp(_BindResp):
    command_id: ClassVar[int] = CommandId.BIND_TRANSMITTER_RESP


@dataclass(frozen=True, slots=True)
class BindReceiverResp(_BindResp):
    command_id: ClassVar[int] = CommandId.BIND_RECEIVER_RESP


@dataclass(frozen=True, slots=True)
class BindTransceiverResp(_BindResp):
    command_id: ClassVar[int] = CommandId.BIND_TRANSCEIVER_RESP


@dataclass(frozen=True, slots=True)
class Outbind(Pdu):
    command_id: ClassVar[int] = CommandId.OUTBIND
    system_id: str = ""
    password: str = ""

    def __repr__(self) -> str:
        return f"Outbind(sequence_number={self.sequence_number}, system_id={self.system_id!r})"


@dataclass(frozen=True, slots=True)
class Unbind(Pdu):
    command_id: ClassVar[int] = CommandId.UNBIND


@dataclass(frozen=True, slots=True)
class UnbindResp(Pdu):
    command_id: ClassVar[int] = CommandId.UNBIND_RESP


@dataclass(frozen=True, slots=True)
class EnquireLink(Pdu):
    command_id: ClassVar[int] = CommandId.ENQUIRE_LINK


@dataclass(frozen=True, slots=True)
class EnquireLinkResp(Pdu):
    command_id: ClassVar[int] = CommandId.ENQUIRE_LINK_RESP


@dataclass(frozen=True, slots=True)
class GenericNack(Pdu):
    command_id: ClassVar[int] = CommandId.GENERIC_NACK


# -- messages -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ShortMessage(_TlvMixin):
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""


@dataclass(frozen=True, slots=True)
class SubmitSm(_ShortMessage):
    command_id: ClassVar[int] = CommandId.SUBMIT_SM


@dataclass(frozen=True, slots=True)
class DeliverSm(_ShortMessage):
    command_id: ClassVar[int] = CommandId.DELIVER_SM

    @property
    def is_receipt(self) -> bool:
        """True for an SMSC delivery receipt or an intermediate notification (not an MO)."""
        return is_receipt_class(self.esm_class)


@dataclass(frozen=True, slots=True)
class SubmitSmResp(_TlvMixin):
    command_id: ClassVar[int] = CommandId.SUBMIT_SM_RESP
    message_id: str = ""


@dataclass(frozen=True, slots=True)
class DeliverSmResp(_TlvMixin):
    command_id: ClassVar[int] = CommandId.DELIVER_SM_RESP
    message_id: str = ""


@dataclass(frozen=True, slots=True)
class DataSm(_TlvMixin):
    command_id: ClassVar[int] = CommandId.DATA_SM
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    registered_delivery: int = 0
    data_coding: int = 0

    @property
    def is_receipt(self) -> bool:
        """True for a receipt carried by data_sm (some SMSCs send them so)."""
        return is_receipt_class(self.esm_class)


@dataclass(frozen=True, slots=True)
class DataSmResp(_TlvMixin):
    command_id: ClassVar[int] = CommandId.DATA_SM_RESP
    message_id: str = ""


@dataclass(frozen=True, slots=True)
class UnknownPdu(Pdu):
    """A PDU whose command id this codec does not decode (kept raw, answered with generic_nack 0x03)."""

    raw_command_id: int = 0
    body: bytes = b""

    @property
    def is_response(self) -> bool:
        return bool(self.raw_command_id & RESPONSE_BIT)


RESPONSE_FOR: dict[int, type[Pdu]] = {
    CommandId.BIND_TRANSMITTER: BindTransmitterResp,
    CommandId.BIND_RECEIVER: BindReceiverResp,
    CommandId.BIND_TRANSCEIVER: BindTransceiverResp,
    CommandId.SUBMIT_SM: SubmitSmResp,
    CommandId.DELIVER_SM: DeliverSmResp,
    CommandId.DATA_SM: DataSmResp,
    CommandId.UNBIND: UnbindResp,
    CommandId.ENQUIRE_LINK: EnquireLinkResp,
}
