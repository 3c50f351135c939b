"""A hand-computed set of messages for the analytics tests, fed through the real ingest."""

from datetime import UTC, datetime, timedelta

from app.analytics.ranges import TimeRange

from .timed_ingest import receipt, register, reply

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
HOUR = TimeRange("custom", "Custom", T0, T0 + timedelta(hours=1))
USD_T = {"currency": "USD", "localPrice": 1.5, "originalPrice": 0.2, "rateType": "Transactional"}


def at(minutes: int, seconds: int = 0) -> datetime:
    return T0 + timedelta(minutes=minutes, seconds=seconds)


def load_fixture():
    """Eight messages; the comments give what each contributes to the expected numbers."""
    # A: registered, success, delivered (pushed twice), seen; cost on success, a different
    # cost on delivered that must be ignored. To delivered 3 s, to seen 60 s.
    register(at(0), "A", "100")
    receipt(at(0, 2), "A", "success", cost=USD_T)
    receipt(at(0, 5), "A", "delivered", cost={**USD_T, "localPrice": 9.9})
    receipt(at(0, 6), "A", "delivered", cost={**USD_T, "localPrice": 9.9})  # identical push
    receipt(at(1, 2), "A", "seen")
    # B: out of order, delivered before success (to delivered counts 0), a second distinct
    # delivered receipt (another device), seen at 12:12:00. To seen 119 s.
    receipt(at(10, 0), "B", "delivered")
    receipt(at(10, 1), "B", "success")
    receipt(at(11, 0), "B", "delivered", message="Viber message has delivered (device 2)")
    receipt(at(12, 0), "B", "seen")
    # C: failed 11000, cost EUR Promotional.
    receipt(
        at(20, 0),
        "C",
        "success",
        cost={
            "currency": "EUR",
            "localPrice": 2.0,
            "originalPrice": 0.3,
            "rateType": "Promotional",
        },
    )
    receipt(at(20, 10), "C", "failed")
    # D: expired.
    receipt(at(30, 0), "D", "success")
    receipt(at(40, 0), "D", "expired")
    # E: failed 9002, the failure pushed twice.
    receipt(at(35, 0), "E", "success")
    receipt(at(35, 5), "E", "failed", code=9002, message="Phone number error")
    receipt(at(36, 0), "E", "failed", code=9002, message="Phone number error")
    # F: registered, no receipt (pending).
    register(at(50), "F", "600")
    # G: delivered after 30 s, then an anomalous failed that must not count as failed.
    receipt(at(5, 0), "G", "success", cost={**USD_T, "localPrice": 0.5, "originalPrice": 0.1})
    receipt(at(5, 30), "G", "delivered")
    receipt(at(6, 0), "G", "failed")
    # H: first heard of before the range; its reply inside the range still counts.
    receipt(at(-30), "H", "success")
    # Replies: two from 100 (one pushed twice), one from 300, one from 800.
    reply(at(2), "A", "100", "thanks")
    reply(at(3), "A", "100", "stop")
    reply(at(4), "A", "100", "stop")  # identical push
    reply(at(25), "C", "300", "why?")
    reply(at(15), "H", "800", "hi")
