"""deliver_sm / data_sm from an SMSC: receipts to their outbound rows, MOs to `inbound_message`.

Rule of this module: the response to the SMSC is sent only after the writer has committed what the
PDU carried; a PDU we cannot parse is still stored (raw, in `inbound_message`) before it is acked,
so nothing an SMSC sends is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway import metrics
from gateway.results import ResultWriter
from gateway.settings import SmscSettings
from gateway.smpp.client import SmppConnection
from gateway.smpp.gsm import decode_short_message
from gateway.smpp.pdu import DataSm, DataSmResp, DeliverSm, DeliverSmResp, Tag
from gateway.smpp.receipt import ReceiptParseError, msgid_key, parse_receipt
from gateway.smpp.udh import concatenation

log = logging.getLogger(__name__)


class InboundHandler:
    """Called by a connection for each deliver_sm / data_sm of one SMSC."""

    def __init__(self, smsc_name: str, smsc: SmscSettings, writer: ResultWriter) -> None:
        self.smsc_name = smsc_name
        self.smsc = smsc
        self.writer = writer

    def __call__(self, conn: SmppConnection, pdu: DeliverSm | DataSm) -> None:
        seq = pdu.sequence_number
        resp = DeliverSmResp(sequence_number=seq) if isinstance(pdu, DeliverSm) else DataSmResp(sequence_number=seq)

        def ack() -> None:
            conn.send_response(resp)

        payload = _payload(pdu)
        if pdu.is_receipt:
            try:
                receipt = parse_receipt(
                    payload,
                    receipted_message_id=pdu.tlv_str(Tag.RECEIPTED_MESSAGE_ID),
                    message_state=pdu.tlv_int(Tag.MESSAGE_STATE),
                )
            except ReceiptParseError as exc:
                log.warning("unparseable receipt stored raw", extra={"smsc": self.smsc_name, "error": str(exc)})
                self._store_inbound(pdu, payload, ack)
                return
            metrics.RECEIPTS.labels(self.smsc_name, receipt.stat).inc()
            status = receipt.outbound_status
            if status is None:  # intermediate (ENROUTE, ACCEPTD): nothing final to record
                ack()
                return
            err = receipt.err
            error_code = int(err) if err is not None and err.isdigit() and len(err) <= 9 else None
            reason = f"receipt {receipt.stat}" + (f" err:{err}" if err else "")
            self.writer.receipt(
                self.smsc_name,
                msgid_key(receipt.message_id, self.smsc.receipt_id_format),
                receipt.message_id,
                status,
                receipt.stat,
                error_code if status != "delivered" else None,
                reason if status != "delivered" else "delivered",
                ack,
            )
            return
        metrics.MO_RECEIVED.labels(self.smsc_name).inc()
        part = concatenation(pdu.esm_class, payload, pdu.tlvs)
        self.writer.mo_part(
            self.smsc_name,
            pdu.source_addr,
            pdu.destination_addr,
            part.ref,
            part.total,
            part.seq,
            pdu.data_coding,
            pdu.esm_class,
            part.payload,
            ack,
        )

    def _store_inbound(self, pdu: DeliverSm | DataSm, payload: bytes, ack: Callable[[], None]) -> None:
        self.writer.inbound(
            self.smsc_name,
            pdu.source_addr,
            pdu.destination_addr,
            decode_short_message(payload, pdu.data_coding).replace("\x00", "\ufffd"),
            pdu.data_coding,
            pdu.esm_class,
            payload,
            ack,
        )


def _payload(pdu: DeliverSm | DataSm) -> bytes:
    """The user data: short_message, or message_payload when short_message is empty (or for data_sm)."""
    if isinstance(pdu, DeliverSm) and pdu.short_message:
        return pdu.short_message
    return pdu.tlvs.get(Tag.MESSAGE_PAYLOAD, b"")
