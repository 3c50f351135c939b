"""While the database is away, bodies wait durably in the spool and are answered; once it is
back they are applied in arrival order, each exactly once, whatever stops in between."""

import os
import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest

from app import ingest
from app.ingest import spoolfile as spool
from app.records.models import Message, RawBody, Receipt, SpoolMark, db
from support.bodies import encoded, receipt, reply
from support.servers import committer_pid, production_process
from support.wait import until
from test_ingest_engine import assert_consistent


def count_raw(app) -> int:
    with app.app_context():
        try:
            return db.session.execute(db.select(db.func.count()).select_from(RawBody)).scalar()
        finally:
            db.session.remove()


def marks(app) -> int:
    with app.app_context():
        try:
            return db.session.execute(db.select(db.func.count()).select_from(SpoolMark)).scalar()
        finally:
            db.session.remove()


def assert_each_spooled_once(app, expected: int) -> None:
    # A drained file's mark goes right after the file itself.
    until(lambda: marks(app) == 0, 10, "the drained files' marks to go")
    with app.app_context():
        refs = Counter(
            db.session.execute(
                db.select(RawBody.spooled).where(RawBody.spooled.is_not(None))
            ).scalars()
        )
        assert sum(refs.values()) == expected and set(refs.values()) <= {1}, refs.most_common(3)
        db.session.remove()


# --- the spool file -------------------------------------------------------------------------------


KEYS = spool.Keys.of("sqlite:////spool-test.db", "test-secret")


def test_a_record_cut_short_by_a_crash_is_not_read(tmp_path):
    f = spool.SpoolFile(tmp_path, KEYS)
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    f.append(
        [
            (
                "dr",
                at,
                "application/json",
                {"content-type": "application/json"},
                "10.0.0.1",
                b'{"a": 1}',
            ),
            ("message", at, None, {}, None, b"\x00\xff binary"),
        ]
    )
    f.close()
    with open(f.path, "ab") as raw:  # half a line: a write the process never finished
        raw.write(b'{"n": 3, "endpoint": "dr", "rec')
    records = list(spool.records(f.path, KEYS, 0))
    assert [(r.n, r.endpoint, r.body, r.received_at) for r in records] == [
        (1, "dr", b'{"a": 1}', at),
        (2, "message", b"\x00\xff binary", at),
    ]
    assert list(spool.records(f.path, KEYS, 1)) == records[1:]
    assert spool.read_status(f.path).bodies == 2
    assert oct(os.stat(f.path).st_mode & 0o777) == "0o600"


def test_a_file_whose_process_lives_cannot_be_claimed(tmp_path):
    f = spool.SpoolFile(tmp_path, KEYS)
    assert spool.claim(f.path) is None
    f.close()
    fd = spool.claim(f.path)
    assert fd is not None
    os.close(fd)


# --- in process -----------------------------------------------------------------------------------


def post(client, endpoint: str, body: bytes):
    return client.post(f"/webhooks/viber/{endpoint}", data=body, content_type="application/json")


def test_bodies_wait_in_the_spool_and_are_applied_once_the_database_is_back(outage, app, capsys):
    client = app.test_client()
    work = []
    for i in range(10):
        rid = f"spool{i:03d}{'0' * 20}"
        work += [
            ("dr", encoded(receipt(rid, "success", cost=True))),
            ("dr", encoded(receipt(rid, "delivered"))),
            ("dr", encoded(receipt(rid, "seen"))),
            ("message", encoded(reply(rid, f"7930000{i:04d}", f"hi {i}"))),
        ]
    work.append(("dr", encoded(receipt("spool000" + "0" * 20, "seen"))))  # a repeat
    outage.begin()
    started = datetime.now(UTC)
    answers = [post(client, endpoint, body) for endpoint, body in work]
    bad = post(client, "dr", b'{"status": "read"}')
    assert [a.status_code for a in answers] == [200] * len(work)
    assert {a.get_data(as_text=True) for a in answers} == {"success"}
    assert (
        bad.status_code == 422 and bad.get_json()["field"] == "status"
    )  # its own answer, and kept
    health = client.get("/healthz").get_json()
    assert health["status"] == "degraded" and health["spool"]["bodies"] == len(work) + 1
    waiting = ingest.writer_of(app).spooler.status()
    assert waiting.bodies == len(work) + 1 and waiting.oldest >= started
    ended = datetime.now(UTC)
    outage.end()
    until(lambda: client.get("/healthz").get_json()["status"] == "ok", 60, "the spool to drain")
    assert_each_spooled_once(app, len(work) + 1)
    with app.app_context():
        raws = db.session.execute(db.select(RawBody).order_by(RawBody.id)).scalars().all()
        # Applied in arrival order, with the time each was received, not drained.
        assert [r.body for r in raws] == [b for _, b in work] + [b'{"status": "read"}']
        assert all(started <= r.received_at <= ended for r in raws)
        assert Counter(r.outcome for r in raws) == {"accepted": 40, "duplicate": 1, "rejected": 1}
        m = db.session.get(Message, "spool000" + "0" * 20)
        assert (m.status, m.phone, m.replies_count) == ("seen", "79300000000", 1)
        assert m.seen_at < ended
        assert_consistent()
    assert not list(ingest.writer_of(app).folder.glob("*.spool"))
    logged = capsys.readouterr().err
    assert "spooling started" in logged and "event=spool_started" in logged
    assert "event=spool_drained" in logged and f"bodies={len(work) + 1}" in logged


def test_with_the_spool_unwritable_too_a_body_is_answered_503(outage, app_config, tmp_path):
    (tmp_path / "a-file").write_text("")
    app_config["SPOOL_FOLDER"] = str(tmp_path / "a-file" / "spool")  # cannot be made, even by root
    from app import create_app

    app = create_app(app_config)
    with app.app_context():
        db.create_all()
    client = app.test_client()
    outage.begin()
    response = post(client, "dr", encoded(receipt("lost" + "0" * 28, "seen")))
    assert response.status_code == 503
    assert "spool cannot be written" in response.get_json()["error"]
    assert client.get("/healthz").status_code == 503
    outage.end()
    ingest.stop(app)
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_a_drain_that_stopped_midway_resumes_after_the_last_body_applied(app):
    """The mark is committed with the bodies: whatever point a drain stops at, the next one
    applies the rest, and nothing twice."""
    writer = ingest.writer_of(app)
    folder = spool.ensure(writer.folder)
    f = spool.SpoolFile(folder, writer.spooler.keys)
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    bodies = [
        encoded(receipt(f"mid{i:05d}" + "0" * 20, status))
        for i in range(25)
        for status in ("success", "seen")
    ]
    f.append([("dr", at, "application/json", {}, "127.0.0.1", b) for b in bodies])
    f.close()
    whole = f.path.read_bytes()
    # The state a crash leaves after the first 20 bodies were committed: 20 applied, mark 20.
    f.path.write_bytes(b"".join(whole.splitlines(keepends=True)[: 1 + 20]))  # header, 20
    with app.app_context():
        assert ingest.drain(folder, None, 8) == "done"
        assert not f.path.exists()
        f.path.write_bytes(whole)
        db.session.add(SpoolMark(name=f.path.stem, drained_upto=20, updated_at=at))
        db.session.commit()
        assert ingest.drain(folder, None, 8) == "done"
        assert ingest.drain(folder, None, 8) == "done"  # nothing left: a no-op
    assert_each_spooled_once(app, 50)
    with app.app_context():
        assert db.session.execute(db.select(db.func.count()).select_from(Message)).scalar() == 25
        assert_consistent()


def test_a_body_spooled_after_a_commit_whose_answer_was_lost_is_applied_once(app):
    """The connection can break after the database committed a batch and before the writer
    heard of it; the writer then spools those bodies all the same. The drain finds each one
    stored (same endpoint, received time and bytes) and does not apply it again."""
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    committed = encoded(receipt("lost" + "0" * 28, "seen"))
    fresh = encoded(receipt("lost" + "1" * 28, "seen"))
    with app.app_context():
        job = ingest.Job("dr", committed, "application/json", {}, "127.0.0.1", received_at=at)
        assert ingest.apply_batch([job]) and job.result.http_status == 200
    writer = ingest.writer_of(app)
    folder = spool.ensure(writer.folder)
    f = spool.SpoolFile(folder, writer.spooler.keys)
    f.append([("dr", at, "application/json", {}, "127.0.0.1", b) for b in (committed, fresh)])
    f.close()
    with app.app_context():
        assert ingest.drain(folder, None, 8) == "done"
        rows = db.session.execute(db.select(RawBody.body, RawBody.spooled)).all()
        assert sorted((bytes(b), s is not None) for b, s in rows) == sorted(
            [(committed, False), (fresh, True)]
        )
        times = db.session.execute(db.select(Receipt.times_received)).scalars().all()
        assert times == [1, 1]
    assert_each_spooled_once(app, 1)
    with app.app_context():
        assert_consistent()


def test_the_commands_show_and_drain_a_spool_left_behind(app):
    writer = ingest.writer_of(app)
    f = spool.SpoolFile(spool.ensure(writer.folder), writer.spooler.keys)
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    f.append(
        [
            (
                "dr",
                at,
                "application/json",
                {},
                "127.0.0.1",
                encoded(receipt(f"cli{i:05d}" + "0" * 20, "seen")),
            )
            for i in range(3)
        ]
    )
    runner = app.test_cli_runner()
    running = runner.invoke(args=["spool", "status"]).output
    assert "3 waiting" in running and "its process runs" in running
    assert "applied 0 bodies; 3 still waiting" in runner.invoke(args=["spool", "drain"]).output
    f.close()  # as if its process had ended
    assert "its process has ended" in runner.invoke(args=["spool", "status"]).output
    assert "applied 3 bodies; 0 still waiting" in runner.invoke(args=["spool", "drain"]).output
    assert "0 bodies waiting in 0 spool file(s)" in runner.invoke(args=["spool", "status"]).output
    assert_each_spooled_once(app, 3)


def test_the_banner_says_how_many_bodies_wait_and_since_when(client, app):
    writer = ingest.writer_of(app)
    f = spool.SpoolFile(spool.ensure(writer.folder), writer.spooler.keys)
    at = datetime(2026, 3, 1, 12, 34, tzinfo=UTC)
    f.append([("dr", at, "application/json", {}, None, b"{}")] * 2)
    page = client.get("/").get_data(as_text=True)
    assert 'id="banner-spool"' in page and "2 bodies are waiting for the database" in page
    assert "since 12:34 UTC" in page
    app.config["METRICS_TOKEN"] = "m"
    scraped = client.get("/metrics", headers={"Authorization": "Bearer m"}).get_data(as_text=True)
    assert "viberwatch_spool_bodies 2.0" in scraped
    assert "viberwatch_spool_oldest_seconds" in scraped
    f.close()


# --- the production command -----------------------------------------------------------------------


@pytest.fixture
def production(app, outage, tmp_path):
    env = {**outage.env, "WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "32"}
    with production_process(env, tmp_path / "gunicorn.log") as (url, proc):
        yield url, proc


def push_all(url: str, work: list, connections: int = 16) -> list:
    local = threading.local()

    def push(item):
        endpoint, body = item
        client = getattr(local, "client", None) or httpx.Client(base_url=url, timeout=60)
        local.client = client
        return client.post(
            f"/webhooks/viber/{endpoint}",
            content=body,
            headers={"Content-Type": "application/json"},
        ).status_code

    with ThreadPoolExecutor(max_workers=connections) as pool:
        return list(pool.map(push, work))


def mixed(prefix: str, messages: int) -> list:
    work = []
    for i in range(messages):
        rid = f"{prefix}{i:05d}{'0' * 20}"
        work += [
            ("dr", encoded(receipt(rid, "success", cost=True))),
            ("dr", encoded(receipt(rid, "delivered"))),
        ]
        if i % 2 == 0:
            work.append(("message", encoded(reply(rid, f"7940000{i:04d}", "thanks"))))
    random.Random(len(work)).shuffle(work)
    return work


def test_an_outage_under_the_production_command_loses_nothing(app, production, outage):
    url, _proc = production
    work = mixed("out", 80)
    assert len(work) == 200
    outage.begin()
    assert Counter(push_all(url, work)) == {200: 200}
    assert httpx.get(url + "/healthz").json()["status"] == "degraded"
    outage.end()
    until(lambda: count_raw(app) == 200, 30, "the spooled bodies to be applied")
    until(lambda: httpx.get(url + "/healthz").json()["status"] == "ok", 30, "the spool to empty")
    assert_each_spooled_once(app, 200)
    with app.app_context():
        assert_consistent()


def test_the_process_killed_while_it_drains_leaves_no_body_applied_twice_or_lost(
    app, app_config, outage, tmp_path
):
    env = {
        **outage.env,
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "32",
        "VIBERWATCH_INGEST_BATCH_MAX": "10",
    }
    work = mixed("kil", 1200)
    with production_process(env, tmp_path / "gunicorn.log") as (url, proc):
        outage.begin()
        assert Counter(push_all(url, work)) == {200: len(work)}
        outage.end()
        until(lambda: count_raw(app) > 0, 30, "the drain to start")
        applied_at_kill = count_raw(app)
        # The ingest committer spooled every body and drains them.
        os.kill(committer_pid(proc.pid), signal.SIGKILL)
        assert applied_at_kill < len(work)
        # The workers, and the committer started again, find the file left behind.
        until(
            lambda: (
                httpx.get(url + "/healthz").json()["spool"]["bodies"] == 0
                and count_raw(app) == len(work)
            ),
            60,
            "every spooled body to be applied",
        )
    assert_each_spooled_once(app, len(work))
    with app.app_context():
        assert_consistent()


def test_a_database_that_comes_and_goes_never_gets_a_500_and_loses_nothing(app, production, outage):
    """Outages that start and end while requests are in flight, through the production command."""
    url, _proc = production
    stop, answers, work = threading.Event(), [], []
    lock = threading.Lock()

    def pusher(n):
        with httpx.Client(base_url=url, timeout=60) as client:
            i = 0
            while not stop.is_set():
                rid = f"flap{n:02d}{i:06d}" + "0" * 16
                body = encoded(receipt(rid, ("success", "delivered", "seen")[i % 3]))
                status = client.post(
                    "/webhooks/viber/dr", content=body, headers={"Content-Type": "application/json"}
                ).status_code
                with lock:
                    answers.append(status)
                    work.append(body)
                i += 1

    def health():
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                status = client.get("/healthz").status_code
                with lock:
                    answers.append(status)

    threads = [threading.Thread(target=pusher, args=(n,)) for n in range(8)] + [
        threading.Thread(target=health)
    ]
    for t in threads:
        t.start()
    for _ in range(4):
        time.sleep(0.4)
        outage.begin()
        time.sleep(0.4)
        outage.end()
    stop.set()
    for t in threads:
        t.join(60)
    assert set(answers) == {200}, Counter(answers)
    seen = []

    def check():
        seen.append(count_raw(app))
        return seen[-1] == len(work)

    try:
        until(check, 60, "every body to be applied")
    finally:
        print("XCOUNT", seen[-3:], len(work))
    until(lambda: httpx.get(url + "/healthz").json()["status"] == "ok", 30, "the spool to empty")
    with app.app_context():
        stored = Counter(db.session.execute(db.select(RawBody.body)).scalars())
        assert stored == Counter(work)
        assert_consistent()
