"""NXCLOUD's request signature: one implementation for signing sends and verifying callbacks."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Signature:
    """The signature a call carried, once verified: what is used once (records.replay)."""

    sign: str
    access_key: str
    ts: int

    @classmethod
    def of(cls, headers: Mapping) -> Signature | None:
        """The signature a call carries (checked already), or None."""
        sign, access_key, ts = (
            headers.get("sign"),
            headers.get("accessKey") or headers.get("accesskey"),
            headers.get("ts"),
        )
        if not sign or not access_key or not ts or not str(ts).isdigit():
            return None
        return cls(sign.strip().lower(), access_key, int(ts))
