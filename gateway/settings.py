"""Gateway settings: a TOML file (`--config`) with `SMSGW_` environment overrides (`__` for nesting).

Secrets (SMPP passwords, the database URL) may come from the environment or from files
(`password_file`, `url_file`) so they stay out of config files. A bad config fails at start with one
line per problem, naming the key.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.quiet_hours import next_allowed
from keywords.config import ShortCodeKeywords

# auto: match receipt ids as written, then hex<->decimal both ways (gateway/smpp/receipt.py receipt_keys);
# string / decimal / hex: explicit overrides, one key per id (set both sides of an SMSC).
IdFormat = Literal["auto", "string", "decimal", "hex"]



class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the problem."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SmscSettings(_Model):
    """One carrier SMSC account."""

    host: str = "127.0.0.1"
    port: int = Field(2775, ge=1, le=65535)
    system_id: str = Field(min_length=1, max_length=15)
    password: SecretStr | None = None
    password_file: Path | None = None
    system_type: str = Field("", max_length=12)
    binds: int = Field(1, ge=1, le=64, description="sending binds: transceivers, or transmitters in 'pair' mode")
    bind_mode: Literal["transceiver", "pair"] = Field(
        "transceiver", description="pair: transmitter binds plus `receivers` receiver binds (SMSCs without TRX)"
    )
    receivers: int = Field(1, ge=1, le=16, description="receiver binds in 'pair' mode")
    interface_version: int = Field(0x34, ge=0, le=0xFF, description="0x34 = SMPP 3.4; some SMSCs want 0x33")
    window: int = Field(10, ge=1, le=1000, description="unanswered submit_sm per bind")
    tps: float = Field(0.0, ge=0, description="account messages per second (all binds, all instances); 0 = none")
    bind_tps: float = Field(0.0, ge=0, description="limit per bind, on top of the account's; 0 = none")
    burst: float = Field(1.0, ge=1, description="sends allowed back to back; 1 = evenly spaced")
    response_timeout: float = Field(30.0, gt=0)
    late_response_grace: float | None = Field(
        None, ge=0, description="a submit_sm_resp this late after its timeout is still recorded; None = the timeout"
    )
    bind_timeout: float = Field(10.0, gt=0)
    connect_timeout: float = Field(10.0, gt=0)
    enquire_link_interval: float = Field(30.0, gt=0)
    reconnect_min: float = Field(1.0, gt=0)
    reconnect_max: float = Field(60.0, gt=0)
    tls: bool = False
    tls_ca_file: Path | None = Field(None, description="CA bundle (PEM) to verify the SMSC; None = the system's")
    tls_verify: bool = Field(
        True,
        description="verify the SMSC's certificate chain and host name; false turns both off (a warning at start)",
    )
    source_ton: int | None = Field(None, ge=0, le=255, description="None: 3 for short codes, 5 alphanumeric, 1 else")
    source_npi: int | None = Field(None, ge=0, le=255)
    dest_ton: int = Field(1, ge=0, le=255)
    dest_npi: int = Field(1, ge=0, le=255)
    registered_delivery: int = Field(1, ge=0, le=255)
    service_type: str = Field("", max_length=5)
    submit_id_format: IdFormat = "auto"
    receipt_id_format: IdFormat = "auto"
    latin1: bool = False
    long_messages: Literal["udh8", "udh16", "sar", "payload"] = Field(
        "udh8", description="how parts are linked: UDH with 8/16-bit reference, SAR TLVs, or one message_payload"
    )
    smart_encoding: bool = Field(False, description="replace look-alikes (curly quotes, dashes) to stay in GSM-7")
    # command_status -> transient | throttle | permanent | session, over the built-in table
    # (gateway/error_policy.py); keys as "0x45" or "69", e.g. vendor codes 0x400-0x4FF.
    error_classes: dict[str, Literal["transient", "throttle", "permanent", "session"]] = Field(default_factory=dict)

    @field_validator("error_classes")
    @classmethod
    def _status_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            try:
                code = int(key, 0)
            except ValueError:
                raise ValueError(f"error_classes: {key!r} is not a command_status (use 0x45 or 69)") from None
            if not 0 < code <= 0xFFFFFFFF:
                raise ValueError(f"error_classes: {key!r} is out of range")
        return value

    @model_validator(mode="after")
    def _password_present(self) -> SmscSettings:
        if self.password is None and self.password_file is None:
            raise ValueError("set password (or SMSGW_SMSC__<NAME>__PASSWORD) or password_file")
        if self.password is not None and len(self.password.get_secret_value()) > 8:
            raise ValueError("password: SMPP 3.4 allows at most 8 characters")
        return self

    def resolved_password(self) -> str:
        """The SMPP password, read from `password_file` when given."""
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        assert self.password is not None
        return self.password.get_secret_value()


class RouteSettings(_Model):
    """Which SMSC(s) carry a row. Routes are tried in order; the first matching route with an SMSC that is
    up wins (weighted choice among its SMSCs that are up); the next matching route is the failover."""

    smsc: list[str] = Field(min_length=1)
    weights: list[float] | None = None
    source: list[str] = Field(default_factory=list, description="short codes / sender ids; empty = any")
    destination_prefix: list[str] = Field(default_factory=list, description="E.164 digit prefixes; empty = any")
    message_class: Literal["transactional", "marketing"] | None = None

    @field_validator("destination_prefix")
    @classmethod
    def _digit_prefixes(cls, value: list[str]) -> list[str]:
        # Compared with E.164 digits (and used in the claim's LIKE filter): digits only, no '+'.
        for prefix in value:
            if not (prefix.isascii() and prefix.isdigit()):
                raise ValueError(f"destination_prefix: {prefix!r} must be E.164 digits without '+'")
        return value

    @model_validator(mode="after")
    def _weights_match(self) -> RouteSettings:
        if self.weights is not None and (len(self.weights) != len(self.smsc) or any(w <= 0 for w in self.weights)):
            raise ValueError("weights: one positive weight per SMSC of the route")
        return self

    def matches(self, source: str, number: str, message_class: str) -> bool:
        """`number`: E.164 digits, or "" when invalid (the row is then routed to be rejected with its reason)."""
        if self.source and source not in self.source:
            return False
        if self.message_class is not None and message_class != self.message_class:
            return False
        return not (number and self.destination_prefix and not number.startswith(tuple(self.destination_prefix)))

    def weighted(self) -> list[tuple[str, float]]:
        return list(zip(self.smsc, self.weights or [1.0] * len(self.smsc), strict=True))


def check_database_url(url: str, key: str = "") -> str:
    """`url` when it is a postgresql:// URL asyncpg can read; else ValueError (naming `key` when given).

    The message never quotes the URL or a part of it: a password with an unescaped '/', '#' or '?' splits the URL
    so that a fragment of the password lands where the port or host should be, and errors quoting those leak it.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        problem = "not a valid URL (percent-encode '@', ':', '/', '?', '#' and '%' in the user and password)"
    else:
        if parts.scheme in ("postgresql", "postgres"):
            return url
        problem = "must start with postgresql:// (or postgres://)"
    raise ValueError(f"{key}: {problem}" if key else problem)


class DatabaseSettings(_Model):
    url: SecretStr | None = None
    url_file: Path | None = None
    pool_size: int = Field(4, ge=2, le=64)

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_database_url(value.get_secret_value())
        return value

    def resolved_url(self) -> str:
        """The database URL, read from `url_file` when given.

        Raises:
            ConfigError: not set, or not a postgresql:// URL (the message never quotes it).
            OSError: `url_file` cannot be read.
        """
        if self.url_file is not None:
            url = self.url_file.read_text().strip()
            try:
                return check_database_url(url, "database.url_file")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.url is None:
            raise ConfigError("database.url: not set (or SMSGW_DATABASE__URL, or database.url_file)")
        return self.url.get_secret_value()


class DispatcherSettings(_Model):
    instance: str = Field(default_factory=lambda: f"{os.uname().nodename}:{os.getpid()}")
    lease_seconds: float = Field(60.0, gt=0, description="a claimed row returns to the queue after this")
    max_claim: int = Field(500, ge=1, le=5000, description="rows claimed at most in one statement")
    flush_interval: float = Field(0.015, gt=0, le=1.0, description="results are written at least this often")
    flush_max_rows: int = Field(500, ge=1)
    writer_max_pending: int = Field(
        20000, ge=10, description="results waiting for Postgres above which SMPP reading pauses (resumes at half)"
    )
    max_attempts: int = Field(5, ge=1)
    retry_base: float = Field(2.0, gt=0, description="first retry back-off in seconds; doubles per attempt")
    retry_max: float = Field(300.0, gt=0)
    poll_interval: float = Field(1.0, gt=0, description="fallback poll when no NOTIFY arrives")
    maintenance_interval: float = Field(2.0, gt=0, description="reaper, expiry and receipt sweeper period")
    default_region: str = Field("US", min_length=2, max_length=2)
    max_segments: int = Field(6, ge=1, le=255, description="longer bodies end rejected / too_long")
    quiet_hours: bool = Field(True, description="defer marketing outside start-end in the recipient's local time")
    quiet_hours_start: dt.time = dt.time(8, 0)
    quiet_hours_end: dt.time = dt.time(21, 0)
    quiet_hours_default_tz: str = Field("America/New_York", description="for numbers whose zone is unknown")
    lease_buffer_fraction: float = Field(
        0.5, gt=0, le=0.9,
        description="an SMSC's buffer holds at most what its binds send in this fraction of the lease",
    )
    shutdown_timeout: float = Field(10.0, gt=0)
    parked_receipt_days: float = Field(3.0, gt=0)
    parked_receipt_match_seconds: float = Field(
        300.0, gt=0,
        description="a parked receipt (it came before its submit_sm_resp) is applied only to a message marked"
        " submitted within this many seconds of its arrival: the race lasts seconds, ids get reused later",
    )
    receipt_timeout: float = Field(
        72 * 3600.0, gt=0, description="a submitted row without a receipt ends 'expired' after this (seconds)"
    )


    @field_validator("quiet_hours_default_tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        # Admission computes quiet hours for every marketing row: an unknown zone must fail at start, not there.
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone of this system's tz database") from None
        return value

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not a region phonenumbers knows (ISO 3166 alpha-2, e.g. US, GB)")
        return value.upper()

    @model_validator(mode="after")
    def _quiet_window(self) -> DispatcherSettings:
        # The same check quiet_hours.next_allowed makes per row, once, here (any number will do).
        try:
            next_allowed(
                "12025550100", dt.datetime.now(dt.UTC), start=self.quiet_hours_start, end=self.quiet_hours_end,
                default_tz=self.quiet_hours_default_tz,
            )
        except ValueError as exc:
            raise ValueError(f"dispatcher.quiet_hours_start / quiet_hours_end: {exc}") from None
        return self


class InboundSettings(_Model):
    reassembly_timeout: float = Field(60.0, gt=0, description="a concatenated MO missing parts is kept incomplete")
    dedup_window: float = Field(300.0, ge=0, description="the same MO again within this is a re-delivery")
    reply_priority: int = Field(100, ge=-32768, le=32767)
    batch: int = Field(200, ge=1, le=5000)
    poll_interval: float = Field(1.0, gt=0)


class MetricsSettings(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)


WebhookEventType = Literal["message.submitted", "message.final", "message.part_final", "mo.received", "consent.changed"]


def redact_url(url: str) -> str:
    """`url` with the password of its authority and every query value replaced by `***` (for display)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = "&".join(f"{pair.partition('=')[0]}=***" for pair in parts.query.split("&")) if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment and "***"))


def _webhook_secret(value: str, key: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret `whsec_<base64>` (the error never repeats the value)."""
    if not value.startswith("whsec_"):
        raise ValueError(f"{key}: must be a Standard Webhooks secret 'whsec_<base64>'")
    try:
        # Some tools write the base64 unpadded; the standardwebhooks library accepts both.
        raw = base64.b64decode(value[len("whsec_"):] + "==", validate=False)
    except (binascii.Error, ValueError):
        raise ValueError(f"{key}: the part after 'whsec_' is not base64") from None
    if len(raw) < 16:
        raise ValueError(f"{key}: the key must be at least 16 bytes (24 is the usual length)")
    return raw


class WebhookEndpointSettings(_Model):
    """One HTTP endpoint that receives signed events (Standard Webhooks)."""

    url: str
    events: list[WebhookEventType] = Field(
        default_factory=lambda: ["message.final", "mo.received", "consent.changed"], min_length=1
    )
    short_codes: list[str] = Field(default_factory=list, description="only events of these short codes; empty = all")
    secret: SecretStr | None = Field(None, description="whsec_<base64>")
    secret_file: Path | None = None
    previous_secret: SecretStr | None = Field(
        None, description="during a rotation: requests carry a signature with each secret"
    )
    timeout: float = Field(10.0, gt=0, le=300, description="seconds for one POST, connect to answer")
    concurrency: int = Field(8, ge=1, le=256, description="POSTs in flight at once")
    enabled: bool = True

    def __repr_args__(self) -> Any:
        # repr() / str() of the settings (tracebacks, debuggers, logs of a settings object) never show credentials
        # a URL may carry; the value itself stays as written, for the sender.
        for name, value in super().__repr_args__():
            yield name, (redact_url(value) if name == "url" and isinstance(value, str) else value)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # Not the value itself: a URL may carry credentials.
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @model_validator(mode="after")
    def _secret_valid(self) -> WebhookEndpointSettings:
        if self.secret is None and self.secret_file is None:
            raise ValueError("set secret (whsec_<base64>, or SMSGW_WEBHOOK__<NAME>__SECRET) or secret_file")
        if self.secret is not None:
            _webhook_secret(self.secret.get_secret_value(), "secret")
        if self.previous_secret is not None:
            _webhook_secret(self.previous_secret.get_secret_value(), "previous_secret")
        return self

    def signing_keys(self) -> list[bytes]:
        """HMAC keys to sign with: the current secret (read from `secret_file` when given), then the previous.

        Raises:
            ConfigError: the secret file is unreadable or does not hold a valid secret.
        """
        if self.secret_file is not None:
            try:
                current = self.secret_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"webhook secret_file {self.secret_file}: {exc.strerror}") from None
        else:
            assert self.secret is not None
            current = self.secret.get_secret_value()
        try:
            keys = [_webhook_secret(current, "secret_file" if self.secret_file is not None else "secret")]
        except ValueError as exc:
            raise ConfigError(f"webhook {exc}") from None
        if self.previous_secret is not None:
            keys.append(_webhook_secret(self.previous_secret.get_secret_value(), "previous_secret"))
        return keys


class WebhookSettings(_Model):
    """The webhook sender, for every endpoint."""

    max_retry_hours: float = Field(24.0, gt=0, description="an event still undelivered after this is marked dead")
    retry_base: float = Field(1.0, gt=0, description="first retry within this many seconds; doubles per attempt")
    retry_max: float = Field(3600.0, gt=0, description="longest wait between two attempts (seconds)")
    retention_days: float = Field(7.0, gt=0, description="delivered deliveries and their events are pruned after")
    poll_interval: float = Field(1.0, gt=0, description="fallback poll when no NOTIFY arrives")
    batch: int = Field(100, ge=1, le=5000, description="deliveries claimed at most in one statement")
    in_daemon: bool = Field(
        True, description="run the senders inside `smsgw run`; false: run them apart with `smsgw webhooks run`"
    )


class Settings(BaseSettings):
    """Everything the daemon reads at start."""

    model_config = SettingsConfigDict(
        env_prefix="SMSGW_", env_nested_delimiter="__", extra="forbid", frozen=True, case_sensitive=False
    )

    database: DatabaseSettings = DatabaseSettings()
    smsc: dict[str, SmscSettings] = Field(default_factory=dict)
    route: list[RouteSettings] = Field(default_factory=list)
    dispatcher: DispatcherSettings = DispatcherSettings()
    metrics: MetricsSettings = MetricsSettings()
    inbound: InboundSettings = InboundSettings()
    # Per short code: programs, lists, keywords and reply templates ([keywords."12345"] in TOML).
    keywords: dict[str, ShortCodeKeywords] = Field(default_factory=dict)
    # Webhook endpoints by name ([webhook.crm] in TOML) and the sender's settings ([webhooks]).
    webhook: dict[str, WebhookEndpointSettings] = Field(default_factory=dict)
    webhooks: WebhookSettings = WebhookSettings()
    # For MOs to a short code without its own section.
    keywords_default: ShortCodeKeywords = ShortCodeKeywords(
        program="SMS alerts", contact="our support team", frequency="Msg frequency varies"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    # Phone numbers in logs are masked to their last 4 digits unless this is true (gateway/logs.py).
    log_numbers: bool = False

    @field_validator("smsc", "webhook")
    @classmethod
    def _names(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # SMSC and endpoint names are metric labels and database keys: short and plain.
        kind = "SMSC" if info.field_name == "smsc" else "webhook"
        for name in value:
            if not name or len(name) > 32 or not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"{kind} name {name!r} must be 1-32 letters, digits, '-' or '_'")
        return value

    @model_validator(mode="after")
    def _routes_name_smscs(self) -> Settings:
        for i, route in enumerate(self.route):
            for name in route.smsc:
                if name not in self.smsc:
                    raise ValueError(f"route.{i}.smsc: {name!r} is not a configured SMSC ({sorted(self.smsc)})")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the TOML file (passed as init values).
        return env_settings, init_settings


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Load settings from a TOML file and the environment.

    Raises:
        ConfigError: unreadable file or invalid values; the message names each bad key.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: `key.path: message`."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"config error: {key}: {err['msg']}")
    return "\n".join(lines)
