"""Structured logging: one JSON object per line (or one human-readable line with `log_format = "text"`),
with the `extra` fields kept as fields.

Field names across the code base: `smsc` (the SMSC's configured name), `bind` (a bind's name, e.g. `sim-0`),
`row` (an outbound_message id), `msisdn` / `number` / `source` / `destination` for phone numbers, `error` for
an error's text, `count` / `rows` for how many.

Every record passes through one redaction step in the formatter (records themselves are not modified):
- phone numbers are masked to their last 4 digits (`+*******0123`) unless `log_numbers = true`: the values of
  number-bearing fields (`source`, `destination`, `msisdn`, `number`, `to`, `sender`, ...), and, in any text
  (the message, string fields, tracebacks), a `+` followed by 7-15 digits or a number written after a
  number-bearing key (`msisdn=...`, `source_addr='...'`, `Key (msisdn)=(...)`); message ids and counts are
  left alone;
- secrets always: fields named like a password / secret / token are replaced by `***`, and credentials in URLs
  (`postgresql://user:***@host`, `?token=***`), `password=...` and webhook secrets (`whsec_***`) in text are
  masked. Secrets are also never passed to the loggers in the first place; this is the safety net.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_STANDARD = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}

# Fields shown first (in this order) when present: where an event happened and which message it concerns.
_FIRST = ("smsc", "bind", "row")

# Extra fields whose values are phone numbers (or carry them).
NUMBER_FIELDS = frozenset(
    {
        "msisdn",
        "msisdns",
        "number",
        "numbers",
        "source",
        "destination",
        "source_addr",
        "destination_addr",
        "to",
        "from",
        "sender",
        "recipient",
        "phone",
    }
)
_SECRET_FIELD = re.compile(r"pass(word|wd)?$|secret|token|api_?key|credential", re.IGNORECASE)

# A run of 7-15 digits: the length of a subscriber number (E.164 allows at most 15); short codes (3-6 digits)
# stay readable.
_DIGITS = re.compile(r"(?<!\d)\d{7,15}(?!\d)")
# In free text only an unmistakable number is masked: '+' and 7-15 digits not glued to a word or another digit
# (a message id, count, port or timestamp never starts with '+').
_E164_IN_TEXT = re.compile(r"(?<![\w+*])\+(\d{7,15})(?!\d)")
# ... or digits written as the value of a number-bearing key: msisdn=..., source_addr='...', Key (msisdn)=(...).
_KEYED_NUMBER = re.compile(
    r"\b(msisdn|number|destination(?:_addr)?|source(?:_addr)?|sender|recipient|phone|to|from)\b"
    r"([)\]\"']*\s*[=:]\s*[(\[\"']*)(\+?)(\d{7,15})(?!\d)",
    re.IGNORECASE,
)
_URL_CREDENTIALS = re.compile(r"\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@", re.IGNORECASE)
_PASSWORD_IN_TEXT = re.compile(r"\b(password|passwd|pwd)(\s*[=:]\s*)('[^']*'|\"[^\"]*\"|[^\s,;&)]+)", re.IGNORECASE)
# A credential in a URL's query (a webhook URL `...?token=...`, `&api_key=...`, `&sig=...`), quoted by an error.
_QUERY_SECRET = re.compile(
    r"([?&][\w.-]*(?:token|secret|key|sig|password|passwd|pwd|auth|credential)[\w.-]*=)[^&#\s'\"]+",
    re.IGNORECASE,
)
# A Standard Webhooks signing secret, wherever it appears.
_WEBHOOK_SECRET = re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]+")


def mask_digits(digits: str) -> str:
    """All but the last 4 digits replaced by '*'."""
    return "*" * (len(digits) - 4) + digits[-4:]


def mask_number_value(value: str) -> str:
    """A number-bearing field: every run of 7-15 digits keeps its last 4 (`+12025550123` -> `+*******0123`)."""
    return _DIGITS.sub(lambda m: mask_digits(m.group(0)), value)


def mask_numbers_in_text(text: str) -> str:
    """Free text: `+` and 7-15 digits, and numbers after a number-bearing key; nothing else."""
    text = _E164_IN_TEXT.sub(lambda m: "+" + mask_digits(m.group(1)), text)
    return _KEYED_NUMBER.sub(lambda m: m.group(1) + m.group(2) + m.group(3) + mask_digits(m.group(4)), text)


def mask_secrets_in_text(text: str) -> str:
    """Credentials in URLs (authority and secret-named query parameters), `password=...`, webhook secrets."""
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    text = _QUERY_SECRET.sub(r"\1***", text)
    text = _WEBHOOK_SECRET.sub("whsec_***", text)
    return _PASSWORD_IN_TEXT.sub(r"\1\2***", text)


class Redactor:
    """Masks phone numbers (unless `log_numbers`) and secrets in text and in field values."""

    def __init__(self, *, log_numbers: bool = False) -> None:
        self.log_numbers = log_numbers

    def text(self, text: str) -> str:
        text = mask_secrets_in_text(text)
        return text if self.log_numbers else mask_numbers_in_text(text)

    def field(self, key: str, value: Any, *, number: bool = False) -> Any:
        if _SECRET_FIELD.search(key):
            return "***" if value is not None else None
        number = number or key.lower() in NUMBER_FIELDS
        if isinstance(value, dict):
            return {str(k): self.field(str(k), v, number=number) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.field(key, v, number=number) for v in value]
        if value is None or isinstance(value, (bool, float)):
            return value
        if isinstance(value, int):
            if number and not self.log_numbers and len(str(abs(value))) >= 7:
                return mask_number_value(str(value))
            return value
        text = self.text(value if isinstance(value, str) else str(value))
        if number and not self.log_numbers:
            text = mask_number_value(text)
        return text


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    extra = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
    ordered = {k: extra.pop(k) for k in _FIRST if k in extra}
    ordered.update(extra)
    return ordered


class _RedactingFormatter(logging.Formatter):
    def __init__(self, *, log_numbers: bool = False) -> None:
        super().__init__()
        self.redact = Redactor(log_numbers=log_numbers)

    def parts(self, record: logging.LogRecord) -> tuple[str, dict[str, Any], str | None]:
        """(message, fields, traceback), redacted."""
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format must not lose the event
            message = f"{record.msg!s} {record.args!r}"
        fields = {k: self.redact.field(k, v) for k, v in _fields(record).items()}
        exc = None
        if record.exc_info:
            exc = self.formatException(record.exc_info)
        elif record.exc_text:
            exc = record.exc_text
        if record.stack_info:
            exc = (exc + "\n" if exc else "") + self.formatStack(record.stack_info)
        return self.redact.text(message), fields, self.redact.text(exc) if exc else None


class JsonFormatter(_RedactingFormatter):
    def format(self, record: logging.LogRecord) -> str:
        message, fields, exc = self.parts(record)
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
        }
        for key, value in fields.items():
            out.setdefault(key, value)  # a field never overwrites ts / level / logger / msg
        if exc:
            out["exc"] = exc
        return json.dumps(out, default=str)


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and not any(c in value for c in " =\"\n\t") else json.dumps(value, ensure_ascii=False)
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    return str(value)


class TextFormatter(_RedactingFormatter):
    def format(self, record: logging.LogRecord) -> str:
        message, fields, exc = self.parts(record)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        line = f"{stamp} {record.levelname:<7} {record.name.removeprefix('gateway.')}: {message}"
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        if exc:
            line += "\n" + exc
        return line


def make_formatter(fmt: str = "json", *, log_numbers: bool = False) -> logging.Formatter:
    return JsonFormatter(log_numbers=log_numbers) if fmt == "json" else TextFormatter(log_numbers=log_numbers)


def setup_logging(level: str = "INFO", fmt: str = "json", *, log_numbers: bool = False) -> None:
    """Configure the root logger once for the process (stderr): JSON lines, or text with fmt="text";
    phone numbers masked unless `log_numbers`; secrets always masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(fmt, log_numbers=log_numbers))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
