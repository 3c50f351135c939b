"""The full URLs the app shows (the webhook URLs to paste into NXCLOUD, the dashboard's
address, an alert's link): under PUBLIC_URL when it is set, whoever asks and from wherever;
else at the host and scheme the current request came to, as before."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, has_request_context, url_for


def external_url(endpoint: str, *, base: str | None = None, **values) -> str | None:
    """`endpoint`'s full URL under `base` (a PUBLIC_URL, already checked by app/config.py;
    by default the setting), else under the current request's; None outside a request
    without PUBLIC_URL."""
    base = base or current_app.config.get("PUBLIC_URL")
    if base:
        parts = urlsplit(base)
        adapter = current_app.url_map.bind(
            parts.netloc, script_name=parts.path or "/", url_scheme=parts.scheme
        )
        return adapter.build(endpoint, values, force_external=True)
    if has_request_context():
        return url_for(endpoint, _external=True, **values)
    return None
