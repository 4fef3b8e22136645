"""`smsgw check-config`: load the settings the daemon would load, check what it would refuse at start, and show the
effective values with every secret masked (SMPP passwords, the database URL's password, anything read from a
secret file). The secret values never reach the output, not even in part.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Final

from pydantic import SecretStr

from gateway.settings import ConfigError, Settings, load_settings

MASK: Final = "********"
# Keys whose values are secrets wherever they appear (a future setting named like this is masked too).
_SECRET_KEY = re.compile(r"password|secret|token|api_key", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_PARAM_PASSWORD = re.compile(r"((?:^|[?&\s])password=)[^&\s]*", re.IGNORECASE)
# Every query value of a URL that is not the database's (a webhook URL may carry `?token=...`, or any name).
_QUERY_VALUE = re.compile(r"([?&][^=&#\s]*=)[^&#\s]*")


def mask_url(url: str) -> str:
    """The database URL with its password replaced, whether in the authority or as a parameter."""
    return _PARAM_PASSWORD.sub(lambda m: m.group(1) + MASK, _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + "@", url))


def mask_other_url(url: str) -> str:
    """Any other URL (webhook endpoints): the password in the authority and every query value replaced (which
    query parameter holds a credential is the receiver's choice: `?token=`, `?key=`, `?sig=`...)."""
    return _QUERY_VALUE.sub(lambda m: m.group(1) + MASK, _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + "@", url))


def _mask(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v, key) for v in value]
    if isinstance(value, SecretStr):
        return MASK
    if value is not None and _SECRET_KEY.search(key) and not key.endswith("_file"):
        return MASK
    if isinstance(value, str) and "://" in value:
        return mask_other_url(value)
    return value


def effective(settings: Settings) -> tuple[dict[str, Any], list[str]]:
    """The settings as plain data with secrets masked, and the problems `smsgw run` would stop on."""
    problems: list[str] = []
    data: dict[str, Any] = json.loads(settings.model_dump_json())
    data = _mask(data)
    try:
        data["database"]["url"] = mask_url(settings.database.resolved_url())
    except ConfigError as exc:
        problems.append(str(exc) if str(exc).startswith("config error") else f"config error: {exc}")
        data["database"]["url"] = None
    except OSError as exc:
        problems.append(f"config error: database.url_file: {exc.strerror}")
    if not settings.smsc:
        problems.append("config error: smsc: no SMSC configured (smsgw run refuses to start)")
    for name, smsc in settings.smsc.items():
        if smsc.password_file is not None:
            try:
                smsc.resolved_password()
            except OSError as exc:
                problems.append(f"config error: smsc.{name}.password_file: {exc.strerror}")
    return data, problems


def check(path: Path | None) -> tuple[dict[str, Any] | None, list[str]]:
    """Load and check: (masked settings or None, problem lines). No problems means `smsgw run` would start."""
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        # The lines name keys and problems, never the input (settings.format_validation_error); a URL quoted by
        # another error (a file path, say) is masked all the same.
        return None, [mask_url(line) for line in str(exc).splitlines()]
    return effective(settings)


def flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """`section.key = value` pairs, for people and grep."""
    if isinstance(data, dict) and data:
        out: list[tuple[str, Any]] = []
        for k, v in data.items():
            out.extend(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(data, list) and any(isinstance(v, dict) for v in data):
        out = []
        for i, v in enumerate(data):
            out.extend(flatten(v, f"{prefix}.{i}"))
        return out
    return [(prefix, data)]
