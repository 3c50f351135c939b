"""The pass-through send proxy: a sending system changes only its NXCLOUD base URL to this
server's `/nxcloud`, and every send is recorded with its phone, text, type, rate type, appkey
and tags, while nothing else about the send changes.

    POST /nxcloud/api/viber/mt   NXCLOUD's send call, forwarded byte for byte to
                                 NXCLOUD_BASE_URL (the body and the signing headers as they
                                 are; viberwatch needs no NXCLOUD secret), NXCLOUD's answer
                                 given back as it is (status, body, content type)

When NXCLOUD answers code 0 with a requestId, the message is registered through the ingest
path, as `POST /api/messages` would register it (so with the database away the
registration waits in the spool, and the sender still gets NXCLOUD's answer). A failure to
register never fails the send. Tags come from `X-Viberwatch-Tags` (comma separated) or a
`tags` query parameter, so the NXCLOUD body stays untouched; viberwatch's own headers and
parameters are never sent upstream.

Not an open relay: a call needs an API token (`Authorization: Bearer`, or `?token=` for a
sender that cannot add headers) or a source address in PROXY_ALLOW_NETWORKS.
"""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Flask, Response, current_app, request

from .. import ingest
from ..auth import security, tokens
from ..auth.roles import SEND
from ..core.payloads import Invalid, parse_tags
from ..errors import error_response
from . import nxcloud
from .upstream import Answer, Upstream, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

bp = Blueprint("proxy", __name__, url_prefix="/nxcloud")

# What goes upstream of a sender's call: its content type and NXCLOUD's signing headers.
FORWARDED_HEADERS = ("Content-Type", "accessKey", "ts", "bizType", "action", "sign")
TAGS_HEADER = "X-Viberwatch-Tags"


# Kept-alive connections to NXCLOUD, one set per process: a send reuses one instead of a new
# TCP (and TLS) handshake.
upstream = Upstream()


def _refused() -> tuple | None:
    """401/403 unless the call has an API token or comes from an allowed network."""
    networks = current_app.config["PROXY_ALLOW_NETWORKS"]
    if networks and security.address_in(request.remote_addr or "", networks):
        return None
    authorization = request.headers.get("Authorization", "")
    scheme, _, presented = authorization.partition(" ")
    presented = presented.strip() if scheme.lower() == "bearer" else ""
    presented = presented or request.args.get("token", "")
    if presented:
        # Looked up on every call (a revoked token is refused at once), on a connection given
        # back before NXCLOUD is called: a send waiting on NXCLOUD holds none.
        scopes = tokens.live_token_scopes(presented, security.request_client_address())
        if scopes is None:
            return error_response(401, "Authorization", "unknown or revoked token")
        if SEND not in scopes.split():
            return error_response(403, "scope", f"this needs the {SEND} scope")
        return None
    if networks:
        return error_response(
            403, "source", f"address {request.remote_addr or 'unknown'} is not allowed"
        )
    return error_response(
        401,
        "Authorization",
        "an API token is required (Authorization: Bearer, or ?token=)",
        headers={"WWW-Authenticate": 'Bearer realm="viberwatch"'},
    )


def _tags() -> tuple[str, ...]:
    value = request.headers.get(TAGS_HEADER)
    name = TAGS_HEADER
    if value is None:
        value, name = request.args.get("tags"), "tags"
    return parse_tags(value, name)


@bp.post("/api/viber/mt")
def send():
    """NXCLOUD's send call, forwarded unchanged; the message is registered once NXCLOUD
    accepted it."""
    refused = _refused()
    if refused is not None:
        return refused
    try:
        tags = _tags()
    except Invalid as exc:
        return error_response(400, exc.field, exc.reason)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    body = security.read_body(limit)
    if body.too_large:
        return error_response(413, "body", body.describe(limit))
    settings = nxcloud.Settings.from_config(current_app.config)
    headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
    try:
        answer = upstream.post(settings.send_url, body.data, headers, settings.timeout)
    except UpstreamTimeout:
        return error_response(
            504, "upstream", f"NXCLOUD did not answer within {settings.timeout:g} s"
        )
    except UpstreamError as exc:
        return error_response(502, "upstream", f"NXCLOUD could not be reached: {exc.name}")
    request_id = _accepted(answer)
    if request_id is not None:
        _register(body.data, request_id, tags)
    return Response(answer.content, status=answer.status, content_type=answer.content_type)


def _accepted(answer: Answer) -> str | None:
    """The requestId of a send NXCLOUD took (code 0), else None."""
    try:
        data = json.loads(answer.content)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("code") != 0 or isinstance(data.get("code"), bool):
        return None
    inner = data.get("data")
    request_id = inner.get("requestId") if isinstance(inner, dict) else None
    return request_id if isinstance(request_id, str) and request_id.strip() else None


def registration_of(send_body: bytes, request_id: str, tags: tuple[str, ...]) -> bytes:
    """The registration of a send NXCLOUD took: what `POST /api/messages` would be given."""
    try:
        sent = json.loads(send_body)
    except ValueError:
        sent = {}
    sent = sent if isinstance(sent, dict) else {}
    data = sent.get("messageData") if isinstance(sent.get("messageData"), dict) else {}
    registration = {
        "requestId": request_id,
        "phone": sent.get("phone"),
        "text": data.get("text"),
        "appkey": sent.get("appkey"),
        "functionType": sent.get("functionType"),
        "rateType": data.get("rateType"),
        "tags": list(tags),
    }
    return json.dumps(
        {k: v for k, v in registration.items() if v not in (None, [])}, ensure_ascii=False
    ).encode()


def _register(send_body: bytes, request_id: str, tags: tuple[str, ...]) -> None:
    """Register the send through the ingest path, without keeping the sender waiting for the
    record (it is committed, or spooled, a moment later); whatever happens, the send is
    answered."""
    try:
        job = ingest.new_job(
            "register",
            registration_of(send_body, request_id, tags),
            "application/json",
            {"User-Agent": "viberwatch-proxy"},
            request.remote_addr,
        )
        ingest.writer_of(current_app._get_current_object()).submit_later(job)
    except Exception:  # never the send's failure
        log.exception("the registration of sent message %s failed", request_id)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
