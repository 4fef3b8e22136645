"""The addresses of an MO in the one form the rest of the gateway compares: the sender and the short code.

Rule of this module: an MO's sender is stored so that `gateway.message.normalise_number` reads it the way the
SMSC meant it, and its destination (our short code) in the form of `short_code_key`, the same form the
consent tables, the keyword settings and send-time enforcement use.

What SMSCs send in `source_addr_ton` (SMPP 3.4 §5.2.5), and what we do with it:

* 1 international (NPI 1, E.164): digits with the country code and no '+' ("447700900123"), sometimes with '+'
  or with an international prefix "00" written in. Read as international: '+' + digits ("00" dropped, as
  Kannel's `convert_addr_from_pdu` does). Without this the number would be parsed in the default region.
* 2 national: the national significant number ("2025550123"): left as is, parsed in the default region.
* 0 unknown: left as is; a '+' in it still makes it international, else the default region applies.
* 3 network-specific, 4 subscriber, 6 abbreviated (short codes), 5 alphanumeric: left as is; they are not
  E.164 numbers and end `invalid_sender` (stored and announced, never opted in or out).
"""

from __future__ import annotations

from typing import Final

from keywords.consent_watch import short_code_key

__all__ = ["TON_INTERNATIONAL", "mo_sender", "short_code_key"]

TON_INTERNATIONAL: Final = 1


def mo_sender(addr: str, ton: int) -> str:
    """The sender of an MO as stored in `mo_part.source`: '+' and digits when `ton` says international.

    Anything that is not plain ASCII digits (after an optional '+') is returned trimmed but otherwise as
    received: the MO processor decides whether it is a number.
    """
    text = addr.strip()
    if ton != TON_INTERNATIONAL:
        return text
    plus = text.startswith("+")
    digits = text[1:] if plus else text
    if not digits or not (digits.isascii() and digits.isdigit()):
        return text
    if not plus and digits.startswith("00"):
        digits = digits[2:]  # an international prefix written into an international number
    return "+" + digits
