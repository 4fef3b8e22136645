"""Standard Webhooks signatures (https://www.standardwebhooks.com): HMAC-SHA256 over `{id}.{timestamp}.{body}`.

Rule of this module: pure functions of bytes and integers, no I/O and no logging (a secret never reaches a log);
the keys are the base64-decoded part of `whsec_<base64>` secrets (gateway/settings.py `signing_keys`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One signature in the header form `v1,<base64 HMAC-SHA256>` of `{msg_id}.{timestamp}.{body}`."""
    mac = hmac.new(key, b"%s.%d.%s" % (msg_id.encode(), timestamp, body), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signature_header(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one signature per key, space separated (two during a secret rotation, so
    that a receiver that knows either secret verifies)."""
    return " ".join(sign(key, msg_id, timestamp, body) for key in keys)


def headers(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt (`timestamp`: Unix seconds of this attempt)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(keys, msg_id, timestamp, body),
    }
