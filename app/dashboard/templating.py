"""What the templates use beyond Jinja's own: the filters, tests and globals of every page."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

from flask import Flask

from ..core.status import describe_code
from ..core.times import iso
from .listing import encode_cursor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp")


def describe_code_global(code: int | None):
    return describe_code(code)


def http_url(value: str | None) -> str | None:
    """The value when it is an absolute http(s) URL, else None: nothing else becomes a link."""
    if not value:
        return None
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return None
    if parts.scheme.lower() in ("http", "https") and parts.netloc:
        return value.strip()
    return None


def image_name(value: str | None) -> bool:
    """A file name or URL whose path ends like a picture (to show a preview)."""
    if not value:
        return False
    path = urlsplit(value).path if "://" in value else value
    return path.lower().endswith(IMAGE_EXTENSIONS)


def utc_text(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def iso_text(value: datetime | None) -> str:
    return iso(value) or ""


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def price(value: float | None, signed: bool = False) -> str:
    """A price as every page shows it: the stored precision (6 decimals) without trailing
    zeros, "–" when there is none: 29.89465, 0.05, 1234.567891, 1. `signed` adds + to a
    positive difference."""
    if value is None:
        return "–"
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if signed and not text.startswith("-") and text != "0":
        text = "+" + text
    return text.replace("-", "−")


def counted(n: int | None, singular: str, plural: str | None = None) -> str:
    """A count and its noun, singular for one: "1 message", "2 messages", "1,200 replies"."""
    n = n or 0
    noun = singular if n == 1 else (plural or singular + "s")
    return f"{n:,} {noun}"


def body_text(value: bytes | None) -> str:
    """A stored body for display: decoded leniently, escaped by the template."""
    return value.decode("utf-8", errors="replace") if value else ""


def duration(seconds: float) -> str:
    """Seconds as a short human duration: 0.4 s, 42 s, 3 min 5 s, 2 h 10 min, 3 d 4 h."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    for size, unit, sub_size, sub_unit in (
        (86400, "d", 3600, "h"),
        (3600, "h", 60, "min"),
        (60, "min", 1, "s"),
    ):
        if whole >= size:
            rest = (whole % size) // sub_size
            return (
                f"{whole // size} {unit} {rest} {sub_unit}" if rest else f"{whole // size} {unit}"
            )
    return f"{whole} s"


def list_cursor(m) -> str:
    """The keyset position of a message in the messages list (?after= for the rows below)."""
    return encode_cursor(m.last_activity_at, m.request_id)


def init_app(app: Flask) -> None:
    app.add_template_global(describe_code_global, "describe_code")
    app.add_template_global(list_cursor, "list_cursor")
    app.add_template_filter(http_url, "http_url")
    app.add_template_test(image_name, "image_name")
    app.add_template_filter(utc_text, "utc")
    app.add_template_filter(iso_text, "iso")
    app.add_template_filter(percent, "percent")
    app.add_template_filter(body_text, "body_text")
    app.add_template_filter(price, "price")
    app.add_template_filter(counted, "counted")
    app.add_template_filter(duration, "duration")
