"""Message state as a pure function of the set of its receipts, and NXCLOUD's code table.

No Flask imports: this module is the single place where a status is decided.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

STATUSES = ("success", "delivered", "seen", "failed", "expired")
# Order of precedence of the fold, strongest first.
PRECEDENCE = ("seen", "delivered", "expired", "failed", "success")
POSITIVE = ("delivered", "seen")


@dataclass(frozen=True)
class Code:
    code: int
    message: str
    solution: str


CODES: dict[int, Code] = {
    c.code: c
    for c in (
        Code(
            0, "Successfully sent.", "The platform accepted the message; delivery receipts follow."
        ),
        Code(
            1100,
            "Customer does not exist / Status is unavailable",
            "Account status exception, contact the business personnel to handle the account issue",
        ),
        Code(
            1102,
            "Insufficient balance",
            "Insufficient account balance, please contact the business personnel to recharge",
        ),
        Code(
            9000,
            "Request parameter error",
            "Missing parameters, please check the required parameters",
        ),
        Code(
            9001,
            "System business error",
            "System business error, please contact the technical personnel to troubleshoot the issue",
        ),
        Code(
            9002,
            "Phone number error",
            "Invalid phone number, please check the correctness of the number",
        ),
        Code(
            9003,
            "Customer APP does not exist / Status is unavailable",
            "Application status exception, contact the business personnel to handle the creation/disabling "
            "of the cloud platform application",
        ),
        Code(
            9004,
            "Customer APP does not have quotation",
            "Application quotation missing, contact the business personnel to handle the application "
            "quotation issue",
        ),
        Code(
            9005,
            "Missing customer APP routes",
            "Application routes missing, please contact the technical personnel to investigate the routes",
        ),
        Code(
            9999,
            "Unknown error",
            "Please contact the technical personnel to troubleshoot the issue",
        ),
        Code(11000, "Viber send error", "Viber official send failure error message"),
        Code(11001, "Viber message has delivered", "Message has been delivered"),
        Code(11002, "Viber message has seen", "Message has been read"),
        Code(11003, "Viber message has expired", "Message has expired"),
    )
}


def describe_code(code: int | None) -> Code:
    """The catalogue entry for a code; an unknown code is described as unknown, never an error."""
    if code is None:
        return Code(-1, "", "")
    known = CODES.get(code)
    if known is not None:
        return known
    return Code(code, "Unknown code", "This code is not in NXCLOUD's published table.")


@dataclass(frozen=True)
class ReceiptFact:
    """What the fold needs to know of one receipt."""

    status: str
    code: int
    message: str
    received_at: datetime
    key: str = ""  # a stable tie-breaker (the receipt's content hash)
    send_time_raw: str | None = None
    cost: tuple | None = None  # (currency, localPrice, originalPrice, rateType)
    coerced: tuple[str, ...] = ()  # what was read by coercion (payloads.COERCIONS)


@dataclass
class State:
    status: str | None = None
    code: int | None = None
    code_message: str | None = None
    send_time_raw: str | None = None
    times: dict[str, datetime] = field(default_factory=dict)
    cost: tuple | None = None
    anomalies: tuple[str, ...] = ()


def _first(receipts: list[ReceiptFact]) -> ReceiptFact | None:
    # The content hash breaks ties between receipts received in the same instant, and the
    # full content breaks ties between facts that carry no hash, so the choice is a
    # function of the set alone.
    if len(receipts) < 2:
        return receipts[0] if receipts else None
    best = min(receipts, key=_arrival)
    if sum(1 for r in receipts if _arrival(r) == _arrival(best)) > 1:
        return min(receipts, key=lambda r: (r.received_at, r.key, repr(r)))
    return best


def _arrival(r: ReceiptFact) -> tuple:
    return r.received_at, r.key


def fold(receipts: Iterable[ReceiptFact]) -> State:
    """Fold a set of receipts into a message state; arrival order and duplicates do not matter."""
    receipts = list(receipts)
    by_status: dict[str, list[ReceiptFact]] = {}
    for r in receipts:
        by_status.setdefault(r.status, []).append(r)
    state = State()
    if not receipts:
        return state
    for status, group in by_status.items():
        state.times[status] = min(r.received_at for r in group)
    for status in PRECEDENCE:
        if status in by_status:
            decisive = _first(by_status[status])
            state.status = status
            state.code = decisive.code
            state.code_message = decisive.message
            break
    with_cost = [r for r in receipts if r.cost is not None]
    if with_cost:
        state.cost = _first(with_cost).cost
    with_send_time = [r for r in receipts if r.send_time_raw]
    if with_send_time:
        state.send_time_raw = _first(with_send_time).send_time_raw
    state.anomalies = anomalies(by_status.keys())
    return state


def anomalies(statuses: Iterable[str]) -> tuple[str, ...]:
    """Contradictions in a set of statuses; they are kept and flagged, never applied."""
    present = set(statuses)
    found = []
    positive = present & set(POSITIVE)
    if positive:
        seen_or_delivered = "seen" if "seen" in positive else "delivered"
        if "expired" in present:
            found.append(f"expired beside {seen_or_delivered}")
        if "failed" in present:
            found.append(f"failed beside {seen_or_delivered}")
    elif "failed" in present and "expired" in present:
        found.append("failed beside expired")
    return tuple(found)
