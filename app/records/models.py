"""The append-only raw record and the tables derived from it."""

from __future__ import annotations

from datetime import UTC, date, datetime

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator):
    """Stores naive UTC, hands back aware UTC on every database."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)

# BIGINT on PostgreSQL, INTEGER (and so a rowid alias) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class RawBody(db.Model):
    """Every body that reached an endpoint, verbatim, with what became of it."""

    __tablename__ = "raw_body"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(32))  # dr | message | register
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    content_type: Mapped[str | None] = mapped_column(String(255))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    headers: Mapped[str | None] = mapped_column(Text)  # JSON object of the headers that matter
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    # accepted | duplicate | rejected | refused (authentication)
    outcome: Mapped[str] = mapped_column(String(16))
    http_status: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(128))
    reprocessed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # "file:number" of the spool record it was applied from (app/records/spool.py), else NULL.
    spooled: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        Index("ix_raw_body_outcome_id", "outcome", "id"),
        Index("ix_raw_body_request_id", "request_id"),
        Index("ix_raw_body_received_at", "received_at"),
        # /metrics counts webhooks by endpoint and outcome from this index alone.
        Index("ix_raw_body_endpoint_outcome", "endpoint", "outcome"),
    )


class MessageTag(db.Model):
    """One tag of a message (from its registrations; tags only grow): what tag filters and the
    campaigns read."""

    __tablename__ = "message_tag"
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)

    __table_args__ = (Index("ix_message_tag_tag", "tag", "request_id"),)


class Message(db.Model):
    """One outbound Viber message, identified by NXCLOUD's requestId; state is derived."""

    __tablename__ = "message"
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    phone: Mapped[str | None] = mapped_column(String(64))
    # Registration, from the sending system.
    registered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    text: Mapped[str | None] = mapped_column(Text)
    appkey: Mapped[str | None] = mapped_column(String(128))
    function_type: Mapped[str | None] = mapped_column(String(64))
    rate_type: Mapped[str | None] = mapped_column(String(32))
    # Its tags (campaigns), sorted and comma-separated; one row each in message_tag.
    tags: Mapped[str | None] = mapped_column(Text)
    # Folded from the receipts (status.fold); NULL status means registered, no receipt yet.
    status: Mapped[str | None] = mapped_column(String(16))
    code: Mapped[int | None] = mapped_column(Integer)
    code_message: Mapped[str | None] = mapped_column(Text)
    send_time_raw: Mapped[str | None] = mapped_column(String(32))
    send_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cost_currency: Mapped[str | None] = mapped_column(String(16))
    cost_local_price: Mapped[float | None] = mapped_column(Numeric(18, 6, asdecimal=False))
    cost_original_price: Mapped[float | None] = mapped_column(Numeric(18, 6, asdecimal=False))
    cost_rate_type: Mapped[str | None] = mapped_column(String(32))
    anomalies: Mapped[str | None] = mapped_column(Text)  # "; "-joined, NULL when none
    anomaly: Mapped[bool] = mapped_column(Boolean, default=False)
    receipts_count: Mapped[int] = mapped_column(Integer, default=0)
    replies_count: Mapped[int] = mapped_column(Integer, default=0)
    last_reply_text: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_message_activity", "last_activity_at", "request_id"),
        Index("ix_message_status_activity", "status", "last_activity_at", "request_id"),
        # request_id ends each index so keyset pages seek straight to their cursor.
        Index("ix_message_phone_activity", "phone", "last_activity_at", "request_id"),
        Index("ix_message_code_activity", "code", "last_activity_at", "request_id"),
        Index("ix_message_anomaly_activity", "anomaly", "last_activity_at", "request_id"),
        # Analytics take the messages first heard of in a time range.
        Index("ix_message_created", "created_at"),
    )


class Receipt(db.Model):
    """One distinct delivery receipt; an identical push again only bumps its counters."""

    __tablename__ = "receipt"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    raw_id: Mapped[int] = mapped_column(ForeignKey("raw_body.id"))
    request_id: Mapped[str] = mapped_column(String(128))
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    code: Mapped[int] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(Text)
    send_time_raw: Mapped[str] = mapped_column(String(32))
    send_time: Mapped[datetime] = mapped_column(UTCDateTime)
    cost_currency: Mapped[str | None] = mapped_column(String(16))
    cost_local_price: Mapped[float | None] = mapped_column(Numeric(18, 6, asdecimal=False))
    cost_original_price: Mapped[float | None] = mapped_column(Numeric(18, 6, asdecimal=False))
    cost_rate_type: Mapped[str | None] = mapped_column(String(32))
    has_cost: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    times_received: Mapped[int] = mapped_column(Integer, default=1)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # What was read by coercion ("; "-joined, payloads.COERCIONS); NULL for a documented body.
    coerced: Mapped[str | None] = mapped_column(Text)

    # raw_id indexed so deleting raw bodies (purge) finds the rows that point at them.
    __table_args__ = (
        Index("ix_receipt_request_id", "request_id", "received_at"),
        Index("ix_receipt_raw_id", "raw_id"),
    )


class Reply(db.Model):
    """A user's reply; traceRequestId names the message answered, which may be unknown to us."""

    __tablename__ = "reply"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    raw_id: Mapped[int] = mapped_column(ForeignKey("raw_body.id"))
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    phone: Mapped[str] = mapped_column(String(64))
    appkey: Mapped[str] = mapped_column(String(128))
    trace_request_id: Mapped[str] = mapped_column(String(128))
    text: Mapped[str | None] = mapped_column(Text)
    media: Mapped[str | None] = mapped_column(Text)
    file_name: Mapped[str | None] = mapped_column(Text)
    send_time_raw: Mapped[str] = mapped_column(String(32))
    send_time: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    times_received: Mapped[int] = mapped_column(Integer, default=1)
    coerced: Mapped[str | None] = mapped_column(Text)  # as Receipt.coerced

    __table_args__ = (
        Index("ix_reply_trace", "trace_request_id", "received_at"),
        Index("ix_reply_phone", "phone", "received_at"),
        Index("ix_reply_received_at", "received_at"),
        Index("ix_reply_raw_id", "raw_id"),
    )


class Contact(db.Model):
    """One phone's thread summary, kept beside the messages so /conversations stays fast."""

    __tablename__ = "contact"
    phone: Mapped[str] = mapped_column(String(64), primary_key=True)
    messages_count: Mapped[int] = mapped_column(Integer, default=0)
    replies_count: Mapped[int] = mapped_column(Integer, default=0)
    last_preview: Mapped[str | None] = mapped_column(Text)
    # When the message the preview shows arrived: a later message replaces it, never an older one.
    last_preview_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_reply_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_contact_activity", "last_activity_at", "phone"),)


class SendAttempt(db.Model):
    """One try at sending a text through NXCLOUD's send API, whatever became of it.

    Written before the call and completed after it, so no send is ever silently lost.
    """

    __tablename__ = "send_attempt"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    phone: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    rate_type: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16))  # pending | sent | failed
    # NXCLOUD's code (0 when sent); NULL when NXCLOUD never answered.
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_kind: Mapped[str | None] = mapped_column(
        String(16)
    )  # nxcloud | timeout | network | answer | config
    error_reason: Mapped[str | None] = mapped_column(Text)
    error_solution: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(128))
    user: Mapped[str | None] = mapped_column(String(64))  # who sent it, when known

    __table_args__ = (Index("ix_send_attempt_phone", "phone", "created_at"),)


class Activity(db.Model):
    """The activity log: one row per accepted event; its id is the live cursor."""

    __tablename__ = "activity"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # receipt | reply | register
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    request_id: Mapped[str | None] = mapped_column(String(128))
    phone: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str | None] = mapped_column(String(16))
    raw_id: Mapped[int | None] = mapped_column(ForeignKey("raw_body.id"))
    summary: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_activity_created_at", "created_at"),
        Index("ix_activity_raw_id", "raw_id"),
    )


class AlertState(db.Model):
    """The current state of one alert rule, shared by every process that evaluates it."""

    __tablename__ = "alert_state"
    rule: Mapped[str] = mapped_column(String(64), primary_key=True)
    firing: Mapped[bool] = mapped_column(Boolean, default=False)
    episode: Mapped[int] = mapped_column(Integer, default=0)  # bumped each time it starts firing
    since: Mapped[datetime | None] = mapped_column(UTCDateTime)  # when the current state began
    value: Mapped[float | None] = mapped_column(Numeric(18, 6, asdecimal=False))
    summary: Mapped[str | None] = mapped_column(Text)
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AlertNotice(db.Model):
    """One outgoing alert (firing or resolved) and the progress of its delivery."""

    __tablename__ = "alert_notice"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    rule: Mapped[str] = mapped_column(String(64))
    episode: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # firing | resolved
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    payload: Mapped[str] = mapped_column(Text)  # the JSON body that is posted
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # NULL once nothing is left to do (delivered, given up, or no alert URL configured).
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    gave_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_alert_notice_due", "next_attempt_at"),
        Index("ix_alert_notice_created", "created_at"),
    )


class AlertAttempt(db.Model):
    """One POST of an alert notice to the alert URL."""

    __tablename__ = "alert_attempt"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    notice_id: Mapped[int] = mapped_column(ForeignKey("alert_notice.id"))
    number: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    url: Mapped[str] = mapped_column(Text)
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    ok: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (Index("ix_alert_attempt_notice", "notice_id", "number"),)


class User(db.Model):
    """An operator who may sign in to the dashboard."""

    __tablename__ = "app_user"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_login_address: Mapped[str | None] = mapped_column(String(64))
    # viewer, operator or admin (app/auth/roles.py); each includes the one before it.
    role: Mapped[str] = mapped_column(String(16), default="viewer")
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Flask-Login's user interface. The id it keeps in the cookie is the sign-in's own
    # session token (UserSession), set when the user is loaded for a request.
    is_active = True
    is_authenticated = True
    is_anonymous = False
    session_token = None

    def get_id(self) -> str:
        if not self.session_token:
            raise RuntimeError("a user is signed in through a session (auth.start_session)")
        return self.session_token


class UserSession(db.Model):
    """One sign-in. The session cookie carries its token; only the token's SHA-256 is kept.
    Ending it (logout, a new password, `viberwatch logout-user`) ends that cookie wherever
    it was copied, and closes its live socket."""

    __tablename__ = "user_session"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Where and in what it was made, and when it was last used (to the minute): the
    # user's own account page lists them.
    address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(200))
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_user_session_user", "user_id", "ended_at"),)


class ApiToken(db.Model):
    """A bearer token for machines; only the SHA-256 of the token is kept."""

    __tablename__ = "api_token"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings to tell tokens apart
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_address: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What it may do, space-separated: register, read, send (app/auth/roles.py).
    scopes: Mapped[str] = mapped_column(String(64), default="register read send")


class AuditRecord(db.Model):
    """One action of a person (or of a command on the server): who, from where, what, on
    what. Append-only: the database refuses an UPDATE (app/records/append_only.py); rows
    leave only by age (AUDIT_RETENTION_DAYS, through `purge`). The user's name is kept as
    it was, so a record outlives its user."""

    __tablename__ = "audit_record"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    user_id: Mapped[int | None] = mapped_column(Integer)
    username: Mapped[str] = mapped_column(String(80))
    address: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str | None] = mapped_column(String(200))
    details: Mapped[str | None] = mapped_column(Text)  # JSON

    __table_args__ = (
        Index("ix_audit_record_at", "at"),
        Index("ix_audit_record_action", "action", "id"),
        Index("ix_audit_record_username", "username", "id"),
    )


class LoginFailure(db.Model):
    """A failed sign-in; recent rows rate-limit further attempts per account and address."""

    __tablename__ = "login_failure"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_login_failure_username", "username", "at"),
        Index("ix_login_failure_address", "address", "at"),
    )


class RefusedTally(db.Model):
    """Refused webhook calls counted but not kept, per minute, once over the keep rate."""

    __tablename__ = "refused_tally"
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    dropped: Mapped[int] = mapped_column(Integer, default=0)
    last_reason: Mapped[str | None] = mapped_column(Text)


class SpoolMark(db.Model):
    """How far a spool file has been applied: written in the same transaction as the bodies,
    so a drain that stops anywhere resumes after the last body applied, never before."""

    __tablename__ = "spool_mark"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    drained_upto: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RetentionDrop(db.Model):
    """Never-applied bodies deleted to stay under REJECTED_KEEP_BYTES, per minute (for the banner)."""

    __tablename__ = "retention_drop"
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    bodies: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class WebhookSignature(db.Model):
    """A webhook signature that was used, kept past its `ts` window: the same one again is a replay."""

    __tablename__ = "webhook_signature"
    sign: Mapped[str] = mapped_column(String(64), primary_key=True)
    access_key: Mapped[str] = mapped_column(String(128))
    ts: Mapped[int] = mapped_column(BigInteger)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_webhook_signature_seen_at", "seen_at"),)


class MessageTally(db.Model):
    """Messages per (day of last activity, status, code, anomaly), kept in the same transaction
    as every state change so the counters never count the message table."""

    __tablename__ = "message_tally"
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)  # "pending" for NULL
    code: Mapped[int] = mapped_column(Integer, primary_key=True)  # -1 for NULL
    anomaly: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class Outcomes:
    """Messages with their outcome and cost per period first heard of, kept in the same
    transaction as every state change so analytics of long ranges never read every message."""

    status: Mapped[str] = mapped_column(String(16), primary_key=True)  # "pending" for NULL
    code: Mapped[int] = mapped_column(Integer, primary_key=True)  # -1 for NULL
    anomaly: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    currency: Mapped[str] = mapped_column(String(16), primary_key=True)  # "" for NULL
    rate_type: Mapped[str] = mapped_column(String(32), primary_key=True)  # "" for NULL
    n: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered: Mapped[int] = mapped_column(BigInteger, default=0)
    seen: Mapped[int] = mapped_column(BigInteger, default=0)
    priced: Mapped[int] = mapped_column(BigInteger, default=0)
    local_price: Mapped[float] = mapped_column(Numeric(24, 6, asdecimal=False), default=0)
    original_price: Mapped[float] = mapped_column(Numeric(24, 6, asdecimal=False), default=0)


class OutcomeHour(Outcomes, db.Model):
    """Outcomes per hour first heard of (of Message.created_at)."""

    __tablename__ = "outcome_hour"
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True, sort_order=-1)
    __table_args__ = {"sqlite_with_rowid": False}


class OutcomeDay(Outcomes, db.Model):
    """The same per UTC day, so a range shown per day reads 30 rows a month per key, not 720."""

    __tablename__ = "outcome_day"
    day: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True, sort_order=-1)
    __table_args__ = {"sqlite_with_rowid": False}


class LatencyBins:
    """Time to delivered / to seen as counts in narrow bins (2 % wide) with the least and
    greatest value seen in each, for histograms and percentiles."""

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # delivered | seen
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    code: Mapped[int] = mapped_column(Integer, primary_key=True)
    anomaly: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    bin: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)
    low: Mapped[float] = mapped_column(Float)
    high: Mapped[float] = mapped_column(Float)


class LatencyHour(LatencyBins, db.Model):
    """Latency bins per hour first heard of."""

    __tablename__ = "latency_hour"
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True, sort_order=-1)
    __table_args__ = {"sqlite_with_rowid": False}


class LatencyDay(LatencyBins, db.Model):
    """The same bins per UTC day first heard of, so a month reads 30 days' bins, not 720 hours'."""

    __tablename__ = "latency_day"
    day: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True, sort_order=-1)
    __table_args__ = {"sqlite_with_rowid": False}


class LatencyWeek(LatencyBins, db.Model):
    """The same bins per week (from Monday 00:00 UTC) first heard of: a quarter reads 12 weeks'
    bins and the days around them, not 90 days'. A bin recurs day after day, so a week holds
    about as many rows as a day."""

    __tablename__ = "latency_week"
    week: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True, sort_order=-1)
    __table_args__ = {"sqlite_with_rowid": False}


class TagDay(db.Model):
    """Messages per tag and UTC day first heard of, with their outcome, cost and replies: what
    the campaigns list reads (kept in the same transaction as every state change)."""

    __tablename__ = "tag_day"
    # Keyed with the day last: the campaigns list sums a range's days per group in key order.
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)  # "pending" for NULL
    code: Mapped[int] = mapped_column(Integer, primary_key=True)  # -1 for NULL
    currency: Mapped[str] = mapped_column(String(16), primary_key=True)  # "" for NULL
    day: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered: Mapped[int] = mapped_column(BigInteger, default=0)
    seen: Mapped[int] = mapped_column(BigInteger, default=0)
    replied: Mapped[int] = mapped_column(BigInteger, default=0)  # messages with a reply
    replies: Mapped[int] = mapped_column(BigInteger, default=0)
    priced: Mapped[int] = mapped_column(BigInteger, default=0)
    local_price: Mapped[float] = mapped_column(Numeric(24, 6, asdecimal=False), default=0)
    original_price: Mapped[float] = mapped_column(Numeric(24, 6, asdecimal=False), default=0)

    __table_args__ = {"sqlite_with_rowid": False}


class TagHour(db.Model):
    """A tag's funnel per hour first heard of: what a campaign's page draws over time."""

    __tablename__ = "tag_hour"
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)  # "pending" for NULL
    n: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered: Mapped[int] = mapped_column(BigInteger, default=0)
    seen: Mapped[int] = mapped_column(BigInteger, default=0)
    replied: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = {"sqlite_with_rowid": False}


class TagLatency(db.Model):
    """A tag's time to delivered / to seen per UTC day first heard of, in bins 25 % wide with
    the least and greatest value each has held (percentiles for the campaigns list)."""

    __tablename__ = "tag_latency"
    # Keyed tag, kind, bin, then day: the campaigns list sums a range's days per bin in key
    # order, with no sort.
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # delivered | seen
    bin: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)
    low: Mapped[float] = mapped_column(Float)
    high: Mapped[float] = mapped_column(Float)

    __table_args__ = {"sqlite_with_rowid": False}
