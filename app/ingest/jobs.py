"""A body handed to ingest, and its answer: the job, its result, and its validation (no
database, no Flask: what the writer, the committer's protocol and the spool share)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

from ..core import payloads
from ..core.errors import error_body
from ..core.payloads import Invalid
from ..core.signing import Signature
from ..core.times import utcnow

ENDPOINTS = ("dr", "message", "register")
KEPT_HEADERS = (
    "content-type",
    "user-agent",
    "accesskey",
    "ts",
    "biztype",
    "action",
    "sign",
    "x-forwarded-for",
    "token-digest",
)


@dataclass
class Result:
    http_status: int
    outcome: str  # accepted | duplicate | rejected | refused
    raw_id: int | None
    request_id: str | None = None
    error: dict | None = None
    payload: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.http_status < 400


NOT_IN_TIME = "not committed in time; it is still kept and applied"


def unavailable(reason: str, raw_id: int | None = None) -> Result:
    return Result(503, "rejected", raw_id, error=error_body("body", reason, error=reason))


class Done:
    """Set once by the writer, waited for by the one request thread that handed the body over:
    a bare lock, released to wake it. (A threading.Event wakes its waiter only for it to wait
    again on the Event's own lock, which the writer holds while it wakes the whole batch.)"""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._lock.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        return (
            self._set or self._lock.acquire(timeout=-1 if timeout is None else timeout) or self._set
        )


@dataclass(eq=False)
class Job:
    """One body handed to the writer, and its answer once committed."""

    endpoint: str
    body: bytes
    content_type: str | None
    headers: dict  # the headers that matter (KEPT_HEADERS), lower-case names
    remote_addr: str | None
    received_at: datetime | None = None
    raw_id: int | None = None  # a stored body run again (reprocess): its row is updated
    spooled: str | None = None  # "file:number" of the spool record it is applied from
    signature: Signature | None = None  # verified; taken (used once) with the body
    result: Result | None = None
    done: Done = field(default_factory=Done)

    def finish(self, result: Result) -> None:
        self.result = result
        self.done.set()


_last_arrival: list[datetime] = []
_arrival_lock = threading.Lock()


def stamp_arrival(job: Job) -> None:
    """The time a body is received: now, and later than any body of this process before it,
    so received times order bodies as they arrived even within one clock tick."""
    with _arrival_lock:
        now = utcnow()
        if _last_arrival and now <= _last_arrival[0]:
            now = _last_arrival[0] + timedelta(microseconds=1)
        _last_arrival[:] = [now]
    job.received_at = now


def kept_headers(headers) -> dict:
    return {k: v for k, v in ((k.lower(), v) for k, v in headers.items()) if k in KEPT_HEADERS}


Item = payloads.ReceiptIn | payloads.ReplyIn | payloads.RegistrationIn


@dataclass(eq=False)
class Parsed:
    """A job after validation: its item, or the answer that rejects it."""

    job: Job
    item: Item | None = None
    result: Result | None = None
    guessed_id: str | None = None

    @property
    def request_id(self) -> str | None:
        item = self.item
        if item is None:
            return self.guessed_id
        return item.trace_request_id if isinstance(item, payloads.ReplyIn) else item.request_id


def _guess_request_id(data) -> str | None:
    if isinstance(data, dict):
        for key in ("requestId", "traceRequestId"):
            value = data.get(key)
            # PostgreSQL text cannot hold NUL; such an id is only in the raw body.
            if (
                isinstance(value, str)
                and 0 < len(value) <= payloads.MAX_ID_LENGTH
                and "\x00" not in value
            ):
                return value
    return None


def parse(job: Job, zone: tzinfo) -> Parsed:
    """Validate a body (no database): its item, or its rejection."""
    data = None
    try:
        data = payloads.parse_json_object(job.body, job.content_type)
        if job.endpoint == "dr":
            return Parsed(job, payloads.parse_receipt(data, zone))
        if job.endpoint == "message":
            return Parsed(job, payloads.parse_reply(data, zone))
        return Parsed(job, payloads.parse_registration(data))
    except Invalid as exc:
        guessed = _guess_request_id(data)
        return Parsed(
            job,
            result=Result(exc.status, "rejected", None, guessed, error=exc.as_json()),
            guessed_id=guessed,
        )


def queued(p: Parsed) -> Result:
    """The answer to a valid body that waits in the spool: success for a webhook (NXCLOUD
    needs no more), 202 for the API."""
    if p.job.endpoint == "register":
        return Result(202, "queued", None, p.request_id, payload={"requestId": p.request_id})
    return Result(200, "queued", None, p.request_id)


def new_job(
    endpoint: str,
    body: bytes,
    content_type: str | None,
    headers,
    remote_addr: str | None,
    received_at: datetime | None = None,
    signature: Signature | None = None,
) -> Job:
    assert endpoint in ENDPOINTS
    return Job(
        endpoint,
        body,
        content_type,
        kept_headers(headers),
        remote_addr,
        received_at,
        signature=signature,
    )
