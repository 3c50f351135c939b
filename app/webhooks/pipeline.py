"""One webhook, from request to answer: every decision and every header of the answer, in the
order they are made, called by the Flask view (views.py) and by a gunicorn worker's event loop
(app/server/loop.py) alike.

    the client's address    the app's one rule (auth.security.take_client_address)
    handed to Flask         what the app's own hooks answer themselves (a WebSocket upgrade,
                            a NUL in the URL), and an oversized or refused call (kept there)
    checks                  source network, token, size, signature (checks.screen)
    the job                 the body and what is kept of its headers, its signature to take
    the answer              the view's: "success" or the error JSON, the security headers,
                            Vary: Cookie, and never Set-Cookie

The event loop answers a webhook without Flask's dispatch, so it runs none of the app's
request hooks. Each hook the app registers is therefore listed in HOOKS with what it amounts
to for a webhook and where that is done here; a hook that is not (`unaccounted`) fails the
tests, as does an answer header the loop's answers lack (tests/test_webhook_pipeline.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flask import Flask, Response
from werkzeug.datastructures import Headers, MultiDict

from ..auth import security
from ..ingest import Job, Result, new_job
from . import checks

# The two webhook URLs and their endpoints (what NXCLOUD posts to).
PATHS = {"/webhooks/viber/dr": "dr", "/webhooks/viber/message": "message"}

# Every request hook of the app, by kind, and what it is for a webhook.
HOOKS: dict[str, dict[str, str]] = {
    "before_request": {
        "app.observability.logs._start": "the request's start: the loop times it itself",
        "flask_wtf.csrf.CSRFProtect.init_app.<locals>.csrf_protect": (
            "CSRF: the webhooks are exempt (auth.guard)"
        ),
        "app.auth.security.init_app.<locals>.refuse_cross_site_websocket": (
            "an Upgrade header: handed to Flask (to_flask)"
        ),
        "app.auth.security.init_app.<locals>.refuse_nul_in_url": (
            "a NUL in the URL: handed to Flask (to_flask)"
        ),
        "app.auth.guard.require_login": "the webhooks are public: they check themselves",
        "app.ingest.init_app.<locals>.drain_what_was_left": (
            "spools left behind: the committer looks at each round"
        ),
        "app.core.periodic.Periodic.ensure_started": (
            "background threads: the loop starts them (core.periodic.start_all)"
        ),
        "app.live.views._page_cursor": "a page's live cursor: GET requests of pages only",
    },
    "after_request": {
        "app.auth.security.init_app.<locals>.security_headers": "the security headers: answer()",
        "flask_login.login_manager.LoginManager._update_remember_cookie": (
            "a remember-me cookie right after a sign-in, which a webhook never is"
        ),
        "app.observability.logs._finish": (
            "the webhook log line and metrics: the loop writes them (logs.record_webhook)"
        ),
    },
    "teardown_request": {
        "app.observability.logs._failed": "a view that raised: the loop answers no view",
    },
}


def _name(function) -> str:
    return f"{function.__module__}.{function.__qualname__}"


def unaccounted(app: Flask) -> list[str]:
    """The app's request hooks that run for a webhook and are not in HOOKS."""
    registered = {
        "before_request": app.before_request_funcs,
        "after_request": app.after_request_funcs,
        "teardown_request": app.teardown_request_funcs,
    }
    missing = []
    for kind, by_blueprint in registered.items():
        for blueprint in (None, "webhooks"):
            for function in by_blueprint.get(blueprint, ()):
                if _name(function) not in HOOKS[kind]:
                    missing.append(f"{kind}: {_name(function)}")
    for kind in ("url_value_preprocessors", "url_default_functions"):
        for blueprint in (None, "webhooks"):
            missing += [f"{kind}: {_name(f)}" for f in getattr(app, kind).get(blueprint, ())]
    return missing


def prepare(environ: dict, trusted: list) -> str:
    """The client's address, as the app's middleware takes it for a thread (the access log
    shows it)."""
    security.take_client_address(environ, trusted)
    return environ["REMOTE_ADDR"]


def to_flask(environ: dict, args: MultiDict) -> bool:
    """A call the app's own hooks answer: a WebSocket upgrade (a cross-site one is refused),
    a NUL in the URL."""
    return "HTTP_UPGRADE" in environ or any(
        "\x00" in k or "\x00" in v for k, v in args.items(multi=True)
    )


@dataclass(frozen=True)
class Call:
    """What a webhook call presents."""

    endpoint: str
    address: str
    args: Mapping
    headers: Headers
    content_type: str | None
    body: security.Body

    @property
    def token(self) -> str | None:
        return checks.presented_token(self.args, self.headers)


def screen(settings: checks.Settings, call: Call, limit: int) -> checks.Refusal | None:
    """Every check of a call, in order: source and token, the size limit, the signature."""
    return checks.screen(
        settings, call.endpoint, call.address, call.token, call.headers, call.body, limit
    )


def job_of(settings: checks.Settings, call: Call) -> Job:
    """The body handed to ingest, with its verified signature to take (used once)."""
    return new_job(
        call.endpoint,
        call.body.data,
        call.content_type,
        call.headers,
        call.address,
        signature=checks.signature_to_take(settings, call.headers),
    )


def refused(refusal: checks.Refusal) -> tuple[dict, int]:
    return refusal.as_json(), refusal.http_status


def answer(app: Flask, result: Result) -> Response:
    """The answer to a body handed to ingest, with every header the app adds to answers."""
    if result.ok:
        # NXCLOUD's callbacks treat HTTP 200 with the body "success" as accepted.
        response = app.response_class("success", 200, {"Content-Type": "text/plain; charset=utf-8"})
    else:
        response = app.json.response(result.error)
        response.status_code = result.http_status
    security.add_security_headers(response)
    # The session interface adds it to every answer of the app (the sign-in guard reads the
    # session before any view runs); a machine's call never gets Set-Cookie.
    response.vary.add("Cookie")
    return response
