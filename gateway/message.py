"""A claimed queue row crossing into the core, and its translation into a submit_sm.

Rule of this module: validation of producer data happens here, once, and a row that cannot be sent
becomes a `Rejection` with a machine-readable reason; it never raises into the dispatch loop.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import phonenumbers
from pydantic import BaseModel, ConfigDict, field_validator

from gateway.settings import SmscSettings
from gateway.smpp.gsm import UnencodableError
from gateway.smpp.pdu import SubmitSm
from gateway.smpp.segment import TooLongError, segment_text


class ClaimedMessage(BaseModel):
    """One row returned by the claim statement."""

    model_config = ConfigDict(frozen=True)

    id: int
    source: str
    destination: str
    body: str
    priority: int
    message_class: str
    expires_at: datetime | None
    attempts: int
    created_at: datetime
    list_name: str | None = None
    # Kept for the table contract only: enforcement ignores it (a producer can write it). The exemption from
    # opt-out comes from the MO this row answers, looked up by `inbound_message_id` (keywords.sql.CONSENT_CHECK).
    is_opt_out_confirmation: bool = False
    inbound_message_id: int | None = None

    @field_validator("created_at", mode="after")
    @classmethod
    def _aware_created(cls, value: datetime) -> datetime:
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    @field_validator("expires_at", mode="after")
    @classmethod
    def _aware_expiry(cls, value: datetime | None) -> datetime | None:
        """asyncpg returns timestamptz 'infinity' / '-infinity' as naive datetime.max / datetime.min (the claim
        clamps them; this keeps any other path safe): infinity never expires, -infinity long has."""
        if value is None or value.tzinfo is not None:
            return value
        if value == datetime.max:
            return None
        return value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Rejection:
    status: str  # 'rejected' or 'expired'
    reason: str


# Any letter, in any script (a word character that is neither a digit nor '_').
_LETTER = re.compile(r"[^\W\d_]")


# A number already written in E.164 ('+', country code, at most 15 digits): the common case from producers.
_E164 = re.compile(r"\+([1-9][0-9]{6,14})")


@functools.lru_cache(maxsize=1024)
def _national_prefix(country_code: int) -> re.Pattern[str] | None:
    """The pattern `phonenumbers.parse` tries to strip from the start of a national number, for the main
    region of a country code (what parse uses); None when the region has none."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(
        country_code, phonenumbers.region_code_for_country_code(country_code)
    )
    if metadata is None or not metadata.national_prefix_for_parsing:
        return None
    return re.compile(metadata.national_prefix_for_parsing)


def _e164_fast(text: str) -> str | bool | None:
    """`normalise_number` for a number already in E.164, without `phonenumbers.parse` (about 10x faster).

    Returns the digits, None (not a possible number), or False when it cannot decide (the full parser then
    decides). It decides only where parse provably gives the same answer: the country code is the one parse
    extracts (the shortest known prefix), the national part has no leading zero (parse keeps those apart),
    and it does not start with the region's national prefix (parse may strip one). Property-tested against
    the full path in tests/test_message.py.
    """
    match = _E164.fullmatch(text)
    if match is None:
        return False
    digits = match.group(1)
    for length in (1, 2, 3):
        country_code = int(digits[:length])
        if country_code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return False
    national = digits[length:]
    if len(national) < 2 or national[0] == "0":
        return False
    prefix = _national_prefix(country_code)
    if prefix is not None and prefix.match(national):
        return False
    number = phonenumbers.PhoneNumber(country_code=country_code, national_number=int(national))
    return digits if phonenumbers.is_possible_number(number) else None


@functools.lru_cache(maxsize=65536)
def normalise_number(raw: str, default_region: str) -> str | None:
    """E.164 digits without '+' for a recipient number, or None when it is not a possible number."""
    text = raw.strip()
    fast = _e164_fast(text)
    if fast is not False:
        return fast  # type: ignore[return-value]
    return _parsed_number(text, default_region)


def _parsed_number(text: str, default_region: str) -> str | None:
    """`normalise_number` by the full `phonenumbers` parse: any format, the default region for national ones."""
    if not text or _LETTER.search(text) is not None:
        # phonenumbers reads letters as a vanity number (+1202555CALL -> ...2255): a producer's typo or a
        # placeholder would reach a stranger, so letters make the number invalid.
        return None
    try:
        parsed = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)[1:]


def source_ton_npi(source: str, smsc: SmscSettings) -> tuple[int, int]:
    """TON/NPI for the sender: configured, else 3/0 for a short code, 5/0 alphanumeric, 1/1 a long number."""
    if smsc.source_ton is not None and smsc.source_npi is not None:
        return smsc.source_ton, smsc.source_npi
    if not source.isdigit():
        return 5, 0
    if len(source) <= 8:
        return 3, 0
    return 1, 1


def validity_period(expires_at: datetime | None) -> str:
    """Absolute SMPP time (UTC, `00+`) for the row's expiry, so the SMSC stops trying when we would."""
    if expires_at is None:
        return ""
    utc = expires_at.astimezone(UTC)
    if not 2000 <= utc.year <= 2099:
        return ""  # two-digit years: 2300 would read as 2000 (already expired); let the SMSC use its default
    return utc.strftime("%y%m%d%H%M%S") + "000+"


def prepare(
    msg: ClaimedMessage, smsc: SmscSettings, default_region: str, now: datetime, max_segments: int
) -> list[SubmitSm] | Rejection:
    """Build the submit_sm of each part of a claimed row (one for a short text), or say why it cannot be sent."""
    if msg.expires_at is not None and msg.expires_at <= now:
        return Rejection("expired", "expired_before_submit")
    if not msg.body:
        return Rejection("rejected", "empty_body")
    source = msg.source.strip()
    if not source or len(source) > 20 or not source.isascii():
        return Rejection("rejected", "invalid_source")
    destination = normalise_number(msg.destination, default_region)
    if destination is None:
        return Rejection("rejected", "invalid_destination")
    try:
        segmented = segment_text(
            msg.body,
            method=smsc.long_messages,
            ref=msg.id,  # the same reference on a retry: a handset joins the parts of either attempt
            latin1=smsc.latin1,
            smart=smsc.smart_encoding,
            max_segments=max_segments,
        )
    except TooLongError:
        return Rejection("rejected", "too_long")
    except UnencodableError:
        return Rejection("rejected", "unencodable_body")
    ton, npi = source_ton_npi(source, smsc)
    validity = validity_period(msg.expires_at)
    return [
        SubmitSm(
            service_type=smsc.service_type,
            source_addr_ton=ton,
            source_addr_npi=npi,
            source_addr=source,
            dest_addr_ton=smsc.dest_ton,
            dest_addr_npi=smsc.dest_npi,
            destination_addr=destination,
            esm_class=seg.esm_class,
            registered_delivery=smsc.registered_delivery,
            validity_period=validity,
            data_coding=segmented.data_coding,
            short_message=seg.payload,
            tlvs=seg.tlvs,
        )
        for seg in segmented.segments
    ]


def consent_refusal(
    msg: ClaimedMessage, *, opted_out: bool, subscribed: bool, exempt: bool = False
) -> Rejection | None:
    """Send-time consent rule: nothing to a number that opted out of the short code, and marketing only to an
    active subscriber of the message's list.

    `exempt` (from CONSENT_CHECK) is true only for a reply to a HELP or STOP that this number sent to this short
    code: HELP is answered to anyone, and a STOP gets its confirmation. `msg.is_opt_out_confirmation` plays no
    part: producers can set it.
    """
    if opted_out and not exempt:
        return Rejection("rejected", "opted_out")
    if msg.message_class == "marketing" and not subscribed:
        return Rejection("rejected", "not_subscribed")
    return None
