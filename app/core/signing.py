"""NXCLOUD's request signature: one implementation for signing sends and verifying callbacks."""

from __future__ import annotations

import hashlib

# NXCLOUD's bizType of Viber, for sends and (when signed) callbacks.
VIBER_BIZ_TYPE = "7"
# NXCLOUD does not document the action of a signed Viber callback: each webhook's own name,
# unless WEBHOOK_SIGN_ACTIONS says otherwise.
CALLBACK_ACTIONS = {"dr": "dr", "message": "message"}


def sign(
    access_key: str, action: str, biz_type: str, ts: str, body: bytes | None, secret: str
) -> str:
    """Lowercase hex MD5 of accessKey=..&action=..&bizType=..&ts=..[&body=..]&accessSecret=..

    `body` is the exact bytes sent; the `&body=` part is left out when it is empty.
    """
    parts = [
        b"accessKey=" + access_key.encode(),
        b"action=" + action.encode(),
        b"bizType=" + biz_type.encode(),
        b"ts=" + ts.encode(),
    ]
    if body:
        parts.append(b"body=" + body)
    parts.append(b"accessSecret=" + secret.encode())
    return hashlib.md5(b"&".join(parts)).hexdigest()
