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
from .status import STATUSES

MAX_ID_LENGTH = 128
MAX_PHONE_LENGTH = 64
MAX_TEXT_LENGTH = 65536
# A message's tags (campaigns): at most this many, each at most this long, case-insensitive.
MAX_TAGS = 5
MAX_TAG_LENGTH = 128
SEND_TIME_RE = re.compile(r"\A(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})\Z")
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


def _integer(data: dict, field: str) -> int:
    if field not in data or data[field] is None:
        raise Invalid(422, field, "is required")
    value = data[field]
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(422, field, f"must be an integer, got {_type_name(value)}")
    if not -(2**31) <= value < 2**31:
        raise Invalid(422, field, "out of range")
    return value


def _number(data: dict, field: str, path: str) -> float | None:
    if field not in data or data[field] is None:
        return None
    value = data[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(422, path + field, f"must be a number, got {_type_name(value)}")
    if abs(value) >= 1e12:
        raise Invalid(422, path + field, "out of range")
    return float(value)


def parse_send_time(raw: str, zone: tzinfo, field: str = "sendTime") -> datetime:
    m = SEND_TIME_RE.match(raw)
    if not m:
        raise Invalid(422, field, 'must look like "YYYY-MM-DD HH:MM:SS"')
    try:
        local = datetime(*map(int, m.groups()))
    except ValueError:
        raise Invalid(422, field, "is not a valid date and time") from None
    try:
        return local.replace(tzinfo=zone).astimezone(UTC)
    except (OverflowError, ValueError):
        # Year 1 east of UTC (or 9999 west of it) has no UTC time that Python can hold.
        raise Invalid(422, field, "out of range once converted to UTC") from None


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
    code = _integer(data, "code")
    message = _string(data, "message", empty=True)
    send_time_raw = _string(data, "sendTime", max_length=32)
    send_time = parse_send_time(send_time_raw, zone)
    cost = None
    raw_cost = data.get("cost")
    if raw_cost is not None:
        if not isinstance(raw_cost, dict):
            raise Invalid(422, "cost", f"must be an object, got {_type_name(raw_cost)}")
        cost = Cost(
            currency=_string(raw_cost, "currency", "cost.", required=False, max_length=16),
            local_price=_number(raw_cost, "localPrice", "cost."),
            original_price=_number(raw_cost, "originalPrice", "cost."),
            rate_type=_string(raw_cost, "rateType", "cost.", required=False, max_length=32),
        )
    return ReceiptIn(
        status, request_id, code, message, send_time_raw, send_time, cost, content_hash("dr", data)
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
    send_time_raw = _string(data, "sendTime", max_length=32)
    send_time = parse_send_time(send_time_raw, zone)
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
    )


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
