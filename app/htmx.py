"""What the views need to know about an htmx request (https://htmx.org/reference/#headers)."""

from flask import request


def is_htmx() -> bool:
    """The request comes from htmx, not from a navigation or a form posted by the browser."""
    return request.headers.get("HX-Request") == "true"


def wants_fragment() -> bool:
    """A fragment request from htmx; a history restore wants the whole page back."""
    return is_htmx() and request.headers.get("HX-History-Restore-Request") != "true"
