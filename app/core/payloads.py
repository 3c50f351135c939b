"""Parsing and validation of the bodies NXCLOUD and sending systems post; no Flask, no database.

Every field is untrusted. A problem is reported as `Invalid(status, field, reason)`:
400 when the body is not JSON at all, 415 for a wrong content type, 422 when it is JSON
but not what the contract documents.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from .errors import FieldError
from .status import STATUSES, describe_code

MAX_ID_LENGTH = 128
MAX_PHONE_LENGTH = 64
MAX_TEXT_LENGTH = 65536
# A message's tags (campaigns): at most this many, each at most this long, case-insensitive.
MAX_TAGS = 5
MAX_TAG_LENGTH = 128
SEND_TIME_RE = re.compile(r"\A(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})\Z")
# ISO 8601 extended format with seconds: "T" (or a space) between date and time, an optional
# fraction of a second, an optional zone (Z, +08:00, +0800, +08). No zone means the zone of
# NXCLOUD's own format (SENDTIME_ZONE). A date alone, week dates or the basic format
# ("20230713T151211") are not taken: reading them is guessing.
ISO_TIME_RE = re.compile(
    r"\A(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?\Z"
)
# An epoch number as `sendTime_text` writes it back (json.dumps of the JSON number): only
# ever made from a JSON number, since a sendTime *text* of digits is refused.
EPOCH_TEXT_RE = re.compile(r"\A\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\Z")
# An epoch number below this is seconds (up to the year 5138), up to EPOCH_MS_LIMIT
# milliseconds (1973 to 5138); anything larger is out of range.
EPOCH_SECONDS_LIMIT = 10**11
EPOCH_MS_LIMIT = 10**14
# Codes and prices given as texts: ASCII decimal digits (a price: an optional sign and
# decimal point too); no exponent, no spaces, no thousands or decimal comma.
CODE_TEXT_RE = re.compile(r"\A[0-9]{1,20}\Z")
PRICE_TEXT_RE = re.compile(r"\A[+-]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})\Z")

# What a body that was read by coercion says about itself: kept with its receipt or reply,
# and shown among its message's anomalies (the message is flagged).
CODE_AS_TEXT = "code given as text"
MESSAGE_FROM_TABLE = "message missing: taken from the code table"
SEND_TIME_ISO = "sendTime in ISO 8601"
SEND_TIME_EPOCH = "sendTime as epoch seconds"
SEND_TIME_EPOCH_MS = "sendTime as epoch milliseconds"
PRICE_AS_TEXT = "price given as text"
COERCIONS = (
    CODE_AS_TEXT,
    MESSAGE_FROM_TABLE,
    SEND_TIME_ISO,
    SEND_TIME_EPOCH,
    SEND_TIME_EPOCH_MS,
    PRICE_AS_TEXT,
)
OFFSET_RE = re.compile(r"\A(?:UTC|GMT)?([+-])(\d{1,2})(?::?(\d{2}))?\Z")


class Invalid(FieldError):
    """A body that is not one of the documented shape (its status: 400, 415 or 422)."""

    def __init__(self, status: int, field: str, reason: str):
        super().__init__(field, reason, status)


def parse_zone(name: str) -> tzinfo:
    """'UTC+08:00', '+8', 'UTC' or an IANA name such as 'Asia/Shanghai'."""
    name = name.strip()
    if name.upper() in ("UTC", "GMT", "Z"):
        return UTC
    m = OFFSET_RE.match(name.upper())
    if m:
        sign = 1 if m.group(1) == "+" else -1
        hours, minutes = int(m.group(2)), int(m.group(3) or 0)
        if hours > 14 or minutes > 59:
            raise ValueError(f"offset out of range: {name!r}")
        return timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        return ZoneInfo(name)
    except Exception as exc:  # zoneinfo raises several kinds for bad names
        raise ValueError(f"unknown time zone: {name!r}") from exc


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(body: bytes, content_type: str | None) -> dict:
    """Decode a request body into a JSON object, or raise Invalid naming what is wrong."""
    mimetype = (content_type or "").split(";", 1)[0].strip().lower()
    if mimetype != "application/json":
        raise Invalid(415, "Content-Type", f"must be application/json, got {mimetype or 'none'}")
    if not body or not body.strip():
        raise Invalid(400, "body", "empty body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid(400, "body", f"not valid UTF-8 at byte {exc.start}") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise Invalid(400, "body", "JSON nested too deeply") from None
    except ValueError as exc:
        raise Invalid(400, "body", f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise Invalid(422, "body", f"must be a JSON object, got {_type_name(data)}")
    _check_structure(data)
    return data


MAX_DEPTH = 32


def _check_structure(data: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH, and lone surrogate escapes ("\\ud800"), which
    decode to text that cannot be stored or hashed as UTF-8."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise Invalid(400, "body", f"JSON nested deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    stack.append((key, depth))
                stack.append((item, depth + 1))
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise Invalid(400, "body", "contains an unpaired surrogate escape") from None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _string(
    data: dict,
    field: str,
    path: str = "",
    *,
    required: bool = True,
    empty: bool = False,
    max_length: int = MAX_TEXT_LENGTH,
) -> str | None:
    name = path + field
    if field not in data or data[field] is None:
        if required:
            raise Invalid(422, name, "is required")
        return None
    value = data[field]
    if not isinstance(value, str):
        raise Invalid(422, name, f"must be a string, got {_type_name(value)}")
    if not empty and not value.strip():
        raise Invalid(422, name, "must not be empty")
    if len(value) > max_length:
        raise Invalid(422, name, f"longer than {max_length} characters")
    if "\x00" in value:
        raise Invalid(422, name, "contains a NUL character")
    return value


def _integer(data: dict, field: str, notes: list[str] | None = None) -> int:
    """An integer; with `notes`, also one given as a text of decimal digits (noted)."""
    if field not in data or data[field] is None:
        raise Invalid(422, field, "is required")
    value = data[field]
    if notes is not None and isinstance(value, str):
        if not CODE_TEXT_RE.match(value):
            raise Invalid(
                422, field, f"must be an integer or a text of decimal digits, got {value[:40]!r}"
            )
        value = int(value)
        if value >= 2**31:
            raise Invalid(422, field, "out of range")
        notes.append(CODE_AS_TEXT)
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(422, field, f"must be an integer, got {_type_name(value)}")
    if not -(2**31) <= value < 2**31:
        raise Invalid(422, field, "out of range")
    return value


def _number(data: dict, field: str, path: str, notes: list[str] | None = None) -> float | None:
    """A number, or nothing; with `notes`, also one given as a decimal text (noted)."""
    if field not in data or data[field] is None:
        return None
    value = data[field]
    if notes is not None and isinstance(value, str):
        if not PRICE_TEXT_RE.match(value):
            raise Invalid(
                422, path + field, f"must be a number or a decimal text, got {value[:40]!r}"
            )
        value = float(value)
        if abs(value) >= 1e12:
            raise Invalid(422, path + field, "out of range")
        if PRICE_AS_TEXT not in notes:
            notes.append(PRICE_AS_TEXT)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(422, path + field, f"must be a number, got {_type_name(value)}")
    if abs(value) >= 1e12:
        raise Invalid(422, path + field, "out of range")
    return float(value)


SEND_TIME_FORMS = 'must look like "YYYY-MM-DD HH:MM:SS" or ISO 8601, or be an epoch number'


def _to_utc(local: datetime, zone: tzinfo, field: str) -> datetime:
    try:
        return local.replace(tzinfo=local.tzinfo or zone).astimezone(UTC)
    except (OverflowError, ValueError):
        # Year 1 east of UTC (or 9999 west of it) has no UTC time that Python can hold.
        raise Invalid(422, field, "out of range once converted to UTC") from None


def _iso_time(m: re.Match, field: str) -> datetime:
    year, month, day, hour, minute, second, fraction, z, sign, oh, om = m.groups()
    zone = None
    if z:
        zone = UTC
    elif sign:
        hours, minutes = int(oh), int(om or 0)
        if hours > 23 or minutes > 59:
            raise Invalid(422, field, "has a zone offset out of range")
        offset = timedelta(hours=hours, minutes=minutes)
        zone = timezone(offset if sign == "+" else -offset)
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((fraction or "")[:6].ljust(6, "0")),
            tzinfo=zone,
        )
    except ValueError:
        raise Invalid(422, field, "is not a valid date and time") from None


def _epoch_time(value: int | float, field: str) -> tuple[datetime, str]:
    if not 0 <= value < EPOCH_MS_LIMIT:
        raise Invalid(422, field, "out of range as an epoch number")
    if value < EPOCH_SECONDS_LIMIT:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=value), SEND_TIME_EPOCH
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value), SEND_TIME_EPOCH_MS


def read_send_time(raw: str, zone: tzinfo, field: str = "sendTime") -> tuple[datetime, str | None]:
    """A sendTime as kept (`send_time_raw`) in UTC, and the coercion it took, if any: NXCLOUD's
    "YYYY-MM-DD HH:MM:SS" in `zone` (none), ISO 8601 (its zone, else `zone`), or the text of
    an epoch number (seconds, or milliseconds by magnitude)."""
    m = SEND_TIME_RE.match(raw)
    if m:
        try:
            local = datetime(*map(int, m.groups()))
        except ValueError:
            raise Invalid(422, field, "is not a valid date and time") from None
        return _to_utc(local, zone, field), None
    m = ISO_TIME_RE.match(raw)
    if m:
        return _to_utc(_iso_time(m, field), zone, field), SEND_TIME_ISO
    if EPOCH_TEXT_RE.match(raw):
        return _epoch_time(json.loads(raw), field)
    raise Invalid(422, field, SEND_TIME_FORMS)


def parse_send_time(raw: str, zone: tzinfo, field: str = "sendTime") -> datetime:
    """The UTC time of a sendTime as kept (`send_time_raw`), whichever form it came in."""
    return read_send_time(raw, zone, field)[0]


def _send_time(data: dict, zone: tzinfo, notes: list[str]) -> tuple[str, datetime]:
    """A body's sendTime: its text as kept (an epoch number as its JSON text) and UTC time."""
    value = data.get("sendTime")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        when, note = _epoch_time(value, "sendTime")
        notes.append(note)
        # Read back by read_send_time: json.loads gives the very same number again.
        return json.dumps(value), when
    raw = _string(data, "sendTime", max_length=32)
    if EPOCH_TEXT_RE.match(raw):  # digits in a text: seconds, or a compact date?
        raise Invalid(422, "sendTime", SEND_TIME_FORMS)
    when, note = read_send_time(raw, zone)
    if note:
        notes.append(note)
    return raw, when


def content_hash(kind: str, data: dict) -> str:
    """Identity of a push: the same JSON content (whatever its spacing or key order) hashes the same."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{kind}\n{canonical}".encode()).hexdigest()


@dataclass(frozen=True)
class Cost:
    currency: str | None
    local_price: float | None
    original_price: float | None
    rate_type: str | None


@dataclass(frozen=True)
class ReceiptIn:
    status: str
    request_id: str
    code: int
    message: str
    send_time_raw: str
    send_time: datetime
    cost: Cost | None
    content_hash: str
    # What was read by coercion (COERCIONS), in that order; () for a body as documented.
    coerced: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReplyIn:
    phone: str
    appkey: str
    trace_request_id: str
    text: str | None
    media: str | None
    file_name: str | None
    send_time_raw: str
    send_time: datetime
    content_hash: str
    coerced: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegistrationIn:
    request_id: str
    phone: str
    text: str | None
    appkey: str | None
    function_type: str | None
    content_hash: str
    rate_type: str | None = None
    tags: tuple[str, ...] = ()


def parse_receipt(data: dict, zone: tzinfo) -> ReceiptIn:
    status = _string(data, "status", max_length=32)
    if status not in STATUSES:
        raise Invalid(422, "status", f"must be one of {', '.join(STATUSES)}, got {status!r}")
    request_id = _string(data, "requestId", max_length=MAX_ID_LENGTH)
    notes: list[str] = []
    code = _integer(data, "code", notes)
    message = _string(data, "message", required=False, empty=True)
    if message is None:
        message = describe_code(code).message
        notes.append(MESSAGE_FROM_TABLE)
    send_time_raw, send_time = _send_time(data, zone, notes)
    cost = None
    raw_cost = data.get("cost")
    if raw_cost is not None:
        if not isinstance(raw_cost, dict):
            raise Invalid(422, "cost", f"must be an object, got {_type_name(raw_cost)}")
        cost = Cost(
            currency=_string(raw_cost, "currency", "cost.", required=False, max_length=16),
            local_price=_number(raw_cost, "localPrice", "cost.", notes),
            original_price=_number(raw_cost, "originalPrice", "cost.", notes),
            rate_type=_string(raw_cost, "rateType", "cost.", required=False, max_length=32),
        )
    return ReceiptIn(
        status,
        request_id,
        code,
        message,
        send_time_raw,
        send_time,
        cost,
        content_hash("dr", data),
        coerced(notes),
    )


def parse_reply(data: dict, zone: tzinfo) -> ReplyIn:
    phone = _string(data, "phone", max_length=MAX_PHONE_LENGTH)
    appkey = _string(data, "appkey", max_length=MAX_ID_LENGTH)
    trace = _string(data, "traceRequestId", max_length=MAX_ID_LENGTH)
    message = data.get("message")
    if message is None:
        raise Invalid(422, "message", "is required")
    if not isinstance(message, dict):
        raise Invalid(422, "message", f"must be an object, got {_type_name(message)}")
    text = _string(message, "text", "message.", required=False, empty=True)
    media = _string(message, "media", "message.", required=False, max_length=4096)
    file_name = _string(
        message, "fileName", "message.", required=False, empty=True, max_length=1024
    )
    if text is None and media is None:
        raise Invalid(422, "message", "must carry text, or media with fileName")
    notes: list[str] = []
    send_time_raw, send_time = _send_time(data, zone, notes)
    return ReplyIn(
        phone,
        appkey,
        trace,
        text,
        media,
        file_name,
        send_time_raw,
        send_time,
        content_hash("message", data),
        coerced(notes),
    )


def coerced(notes) -> tuple[str, ...]:
    """Coercion notes in COERCIONS order, each once (what a receipt or reply keeps)."""
    given = set(notes)
    return tuple(n for n in COERCIONS if n in given)


def parse_registration(data: dict) -> RegistrationIn:
    return RegistrationIn(
        request_id=_string(data, "requestId", max_length=MAX_ID_LENGTH),
        phone=_string(data, "phone", max_length=MAX_PHONE_LENGTH),
        text=_string(data, "text", required=False, empty=True),
        appkey=_string(data, "appkey", required=False, max_length=MAX_ID_LENGTH),
        function_type=_string(data, "functionType", required=False, max_length=64),
        content_hash=content_hash("register", data),
        rate_type=_string(data, "rateType", required=False, max_length=32),
        tags=parse_tags(data.get("tags"), "tags"),
    )


def parse_tags(value, name: str) -> tuple[str, ...]:
    """Tags as a message keeps them: each trimmed and lower-cased (they are case-insensitive),
    the repeats left out, in the order given; a list of strings, or one comma-separated text."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        raise Invalid(422, name, f"must be a list of texts, got {_type_name(value)}")
    tags: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise Invalid(422, name, f"each tag must be a text, got {_type_name(item)}")
        tag = item.strip().lower()
        if not tag:
            continue
        if len(tag) > MAX_TAG_LENGTH:
            raise Invalid(422, name, f"a tag is longer than {MAX_TAG_LENGTH} characters")
        if any(c in tag for c in ",\x00") or not tag.isprintable():
            raise Invalid(
                422, name, f"a tag has a comma or a character that is not printable: {tag!r}"
            )
        if tag not in tags:
            tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise Invalid(422, name, f"a message has at most {MAX_TAGS} tags, got {len(tags)}")
    return tuple(tags)
