"""deliver_sm / data_sm from an SMSC: receipts to their outbound rows, MOs to `inbound_message`.

Rule of this module: the response to the SMSC is sent only after the writer has committed what the
PDU carried; a PDU we cannot parse is still stored (raw, in `inbound_message`) before it is acked,
and one whose handling raises is stored in `quarantine` before it is acked, so nothing an SMSC sends is
lost and nothing is left unanswered. Text values go through `gateway.clean` (here, or in the writer's
`receipt()`), so no NUL reaches a text column. Back-pressure is not handled here: each bind's connection is put
under the writer's flow control once bound (dispatcher.BindWorker), so it stops reading while the writer is behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway import metrics
from gateway.clean import clean_text, error_text
from gateway.results import ResultWriter
from gateway.settings import SmscSettings
from gateway.smpp.client import SmppConnection
from gateway.smpp.gsm import decode_short_message
from gateway.smpp.pdu import DataSm, DataSmResp, DeliverSm, DeliverSmResp, Tag
from gateway.smpp.receipt import ReceiptParseError, error_code, parse_receipt, receipt_keys, stat_label
from gateway.smpp.udh import concatenation
from keywords.address import mo_sender, short_code_key

log = logging.getLogger(__name__)


class InboundHandler:
    """Called by a connection for each deliver_sm / data_sm of one SMSC."""

    def __init__(self, smsc_name: str, smsc: SmscSettings, writer: ResultWriter) -> None:
        self.smsc_name = smsc_name
        self.smsc = smsc
        self.writer = writer

    def __call__(self, conn: SmppConnection, pdu: DeliverSm | DataSm) -> None:
        """Handle one deliver_sm / data_sm: stored (or quarantined) first, answered after the commit."""
        try:
            self._handle(conn, pdu)
        except Exception as exc:  # a bug or a value nobody foresaw: keep the PDU, answer it, go on
            log.exception("deliver_sm handling failed; quarantined", extra={"smsc": self.smsc_name})
            seq = pdu.sequence_number
            resp = DeliverSmResp(sequence_number=seq) if isinstance(pdu, DeliverSm) else DataSmResp(sequence_number=seq)
            fields = {
                "command": type(pdu).__name__, "sequence_number": seq, "esm_class": pdu.esm_class,
                "data_coding": pdu.data_coding, "source_addr": pdu.source_addr,
                "destination_addr": pdu.destination_addr,
                **{f"tlv_{tag:04x}": value for tag, value in pdu.tlvs.items()},
            }
            kind = "receipt" if pdu.is_receipt else "mo_part"
            self.writer.quarantine(kind, self.smsc_name, _payload(pdu), fields, error_text(exc),
                                   lambda: conn.send_response(resp))

    def _handle(self, conn: SmppConnection, pdu: DeliverSm | DataSm) -> None:
        seq = pdu.sequence_number
        resp = DeliverSmResp(sequence_number=seq) if isinstance(pdu, DeliverSm) else DataSmResp(sequence_number=seq)

        def ack() -> None:
            conn.send_response(resp)

        payload = _payload(pdu)
        if pdu.is_receipt:
            self._receipt(pdu, payload, ack)
            return
        metrics.MO_RECEIVED.labels(self.smsc_name).inc()
        part = concatenation(pdu.esm_class, payload, pdu.tlvs)
        self.writer.mo_part(
            self.smsc_name,
            # TON-aware sender ('+' when international) and our short code in its one form (keywords.address).
            mo_sender(pdu.source_addr, pdu.source_addr_ton),
            short_code_key(pdu.destination_addr),
            part.ref,
            part.total,
            part.seq,
            pdu.data_coding,
            pdu.esm_class,
            part.payload,
            ack,
        )

    def _receipt(self, pdu: DeliverSm | DataSm, payload: bytes, ack: Callable[[], None]) -> None:
        """A final receipt to its row (or parked with all its candidate keys); an intermediate one is answered at
        once; one without an id or a state is stored raw. Never dropped, never left unanswered."""
        try:
            receipt = parse_receipt(
                payload,
                receipted_message_id=pdu.tlv_str(Tag.RECEIPTED_MESSAGE_ID),
                message_state=pdu.tlv_int(Tag.MESSAGE_STATE),
            )
            keys = receipt_keys(receipt.message_id, self.smsc.receipt_id_format)
        except ReceiptParseError as exc:
            # Anything else raised here (a parser bug) is quarantined with its error by __call__.
            log.warning("unparseable receipt stored raw", extra={"smsc": self.smsc_name, "error": str(exc)})
            self._store_inbound(pdu, payload, ack)
            return
        metrics.RECEIPTS.labels(self.smsc_name, stat_label(receipt.stat)).inc()
        status = receipt.outbound_status
        if status is None:  # intermediate (ENROUTE, ACCEPTD...): nothing final to record
            ack()
            return
        err = receipt.err
        delivered = status == "delivered"
        self.writer.receipt(
            self.smsc_name,
            keys,
            receipt.message_id,
            status,
            receipt.stat,
            None if delivered else error_code(err),
            # Unknown stats (FAILED, vendor words) end 'undeliverable': the stat as sent stays readable here.
            "delivered" if delivered else f"receipt {receipt.stat}" + (f" err:{err}" if err else ""),
            ack,
            raw=payload,
        )

    def _store_inbound(self, pdu: DeliverSm | DataSm, payload: bytes, ack: Callable[[], None]) -> None:
        self.writer.inbound(
            self.smsc_name,
            pdu.source_addr,
            pdu.destination_addr,
            clean_text(decode_short_message(payload, pdu.data_coding)),
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
