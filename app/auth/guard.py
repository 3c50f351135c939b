"""The login requirement on everything else, checked before every request.

Every endpoint needs a signed-in user, except the login page, static files and the icon, the
webhooks (their own checks, app/webhooks/checks.py), health and metrics (their own token),
the OpenAPI document, and views marked with `public`. The JSON API and the CSV export also
take `Authorization: Bearer <token>` (an API token opens nothing else); such calls need no
CSRF token, as no browser sends them. Past the sign-in, the user's role or the token's scope
must be what the endpoint's rule asks (roles.ACCESS), else 403 and nothing is done.
"""

from __future__ import annotations

import time

from flask import current_app, g, redirect, request, session, url_for
from flask_login import current_user, logout_user

from ..errors import error_response, wants_json
from ..htmx import is_htmx
from .roles import forbidden, has_role, has_scope, rule_for
from .security import MACHINE_BLUEPRINTS, csrf, request_client_address
from .sessions import end_session
from .tokens import token_for

PUBLIC_ENDPOINTS = {"auth.login", "static", "favicon", "openapi.document"}
PUBLIC_BLUEPRINTS = MACHINE_BLUEPRINTS
CSRF_EXEMPT_BLUEPRINTS = {"webhooks", "bench", "proxy"}
BEARER_BLUEPRINTS = {"api"}
# Endpoints outside those blueprints that also take a bearer token: the CSV export, for
# scripts. Only a `Bearer` header counts there; any other (a proxy's Basic login passed
# through) leaves the browser's session to decide, as before.
BEARER_ENDPOINTS = {"export.export_csv"}


def public(view):
    """Mark a view as reachable without a login (it must authenticate on its own)."""
    view.public = True
    return view


def _bearer(authorization: str) -> bool:
    return authorization.partition(" ")[0].lower() == "bearer"


def _takes_bearer(authorization: str) -> bool:
    """Whether this request is answered as an API call: an API endpoint with any
    Authorization header, or an export endpoint with a bearer one."""
    if request.blueprint in BEARER_BLUEPRINTS:
        return bool(authorization)
    return request.endpoint in BEARER_ENDPOINTS and _bearer(authorization)


def _unauthenticated(reason: str):
    authorization = request.headers.get("Authorization", "")
    if request.blueprint in BEARER_BLUEPRINTS or (
        request.endpoint in BEARER_ENDPOINTS and _bearer(authorization)
    ):
        return error_response(
            401, "Authorization", reason, headers={"WWW-Authenticate": 'Bearer realm="viberwatch"'}
        )
    if wants_json():
        return error_response(401, "login", reason)
    login_url = url_for("auth.login", next=request.full_path.rstrip("?"))
    if is_htmx():
        # htmx would swap a login page into a fragment; send the whole window there instead.
        return "", 401, {"HX-Redirect": login_url}
    return redirect(login_url)


def _is_public() -> bool:
    if request.endpoint in PUBLIC_ENDPOINTS or request.blueprint in PUBLIC_BLUEPRINTS:
        return True
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, "public", False))


def _login_expired() -> bool:
    login_at = session.get("login_at")
    return not isinstance(login_at, int) or time.time() - login_at > int(
        current_app.config["LOGIN_MAX_AGE"]
    )


def require_login():
    """before_request: let through public endpoints, bearer API calls and signed-in users."""
    if request.routing_exception is not None:
        return None  # 404 or 405 whoever asks: it shows nothing a 401 would not
    if _is_public():
        if request.blueprint not in CSRF_EXEMPT_BLUEPRINTS:
            csrf.protect()
        return None
    authorization = request.headers.get("Authorization", "")
    if _takes_bearer(authorization):
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return _unauthenticated("use Bearer <token>")
        token = token_for(presented.strip(), request_client_address())
        if token is None:
            return _unauthenticated("unknown or revoked token")
        rule = rule_for(request.endpoint)
        if rule is None or rule.scope is None:
            return error_response(403, "Authorization", "no API token opens this endpoint")
        if not has_scope(token, rule.scope):
            return forbidden(rule.scope, scope=True)
        g.api_token = token
        return None
    if not current_user.is_authenticated:
        return _unauthenticated("sign in required")
    if _login_expired():
        end_session(current_user.session_token)
        logout_user()
        session.clear()
        return _unauthenticated("the sign-in has expired")
    # An endpoint without a rule is nobody's: refused until it gets one (roles.ACCESS).
    rule = rule_for(request.endpoint)
    if rule is None or not has_role(current_user, rule.role):
        return forbidden(rule.role if rule else None)
    csrf.protect()
    return None
