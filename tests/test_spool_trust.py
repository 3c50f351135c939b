"""The spool keeps every body it answered for, and applies nothing it cannot vouch for: a
full disk cuts a refused write back instead of leaving half a record in front of the next
ones; a damaged line is skipped and reported, and a file with anything left unapplied is kept,
never deleted; servers sharing a folder each drain only their own database's files; a folder
others may write into is closed or refused, and a planted, copied or foreign-owned file is
never applied."""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from app import create_app, ingest
from app.ingest import spoolfile as spool
from app.records.models import Message, RawBody, db
from support.bodies import DR, encoded, receipt
from support.postgres import postgres_schema
from support.servers import production_process
from support.wait import until

NOBODY = 65534
AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


def need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("these tests mount a small filesystem and change owners: run as root")
        pytest.skip("needs root (a tmpfs mount, files of another owner)")


class SmallDisk:
    """A tmpfs of a given size at a folder, which a test can grow."""

    def __init__(self, path: Path, size: str):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path], check=True
        )

    def grow(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@contextmanager
def small_disk(path: Path, size: str = "128k"):
    need_root()
    disk = SmallDisk(path, size)
    try:
        yield disk
    finally:
        disk.close()


def line(rid: str) -> tuple:
    return ("dr", AT, "application/json", {}, "127.0.0.1", encoded(receipt(rid)))


def statuses(app, *rids: str) -> dict[str, str]:
    with app.app_context():
        try:
            rows = db.session.execute(
                db.select(Message.request_id, Message.status).where(Message.request_id.in_(rids))
            ).all()
            return dict(rows)
        finally:
            db.session.remove()


def raw_count(app, fragment: str) -> int:
    """Raw bodies that contain `fragment` (read whole: LIKE does not look into bytes)."""
    with app.app_context():
        try:
            bodies = db.session.execute(db.select(RawBody.body)).scalars()
            return sum(fragment.encode() in bytes(b) for b in bodies)
        finally:
            db.session.remove()


# --- the file ------------------------------------------------------------------------------------


def test_a_write_the_full_disk_refused_is_cut_back(tmp_path):
    keys = spool.Keys.of("sqlite:////cut-back.db", "secret")
    with small_disk(tmp_path / "disk") as disk:
        f = spool.SpoolFile(disk.path, keys)
        f.append([line("cut-1")])
        good = f.size
        with pytest.raises(OSError):
            f.append([line("cut-big")[:5] + (encoded(receipt("cut-big", pad=150_000)),)])
        assert os.path.getsize(f.path) == good and not f.broken
        disk.grow("1m")
        f.append([line("cut-2"), line("cut-3")])
        f.close()
        reader = spool.Reader(f.path, keys)
        got = [(r.n, json.loads(r.body)["requestId"]) for r in reader]
        assert got == [(1, "cut-1"), (2, "cut-2"), (3, "cut-3")]
        assert reader.whole


def test_a_damaged_line_is_skipped_reported_and_its_file_kept(app, app_logs):
    """A line changed on disk, and a half-written line with the next record right after it
    (what a refused write left before it was cut back): the records around them, and the
    one after the half line, are applied; the file is kept as damaged, never deleted."""
    writer = ingest.writer_of(app)
    f = spool.SpoolFile(spool.ensure(writer.folder), writer.spooler.keys)
    f.append([line(f"dmg-{i}") for i in range(1, 5)])
    f.close()
    header, one, two, three, four = f.path.read_bytes().splitlines(keepends=True)
    changed = two.replace(b'"n":2', b'"n":9')  # its signature no longer matches
    f.path.write_bytes(header + one + changed + three[:40] + three + four + four[:30])
    with app.app_context():
        assert ingest.drain(writer.folder, None, 10) == "done"
    assert statuses(app, "dmg-1", "dmg-2", "dmg-3", "dmg-4") == {
        "dmg-1": "delivered",
        "dmg-3": "delivered",
        "dmg-4": "delivered",
    }
    kept = f.path.with_name(f.path.name + spool.DAMAGED_SUFFIX)
    assert not f.path.exists() and kept.exists()
    damaged = [r for r in app_logs.records if getattr(r, "event", None) == "spool_damaged"]
    assert len(damaged) == 1 and "2 line(s)" in damaged[0].getMessage()
    assert "30 byte(s)" in damaged[0].getMessage()
    health = app.test_client().get("/healthz").get_json()
    assert health["status"] == "ok" and health["spool"]["damaged_files"] == 1
    app.config["METRICS_TOKEN"] = "m"
    scraped = app.test_client().get("/metrics", headers={"Authorization": "Bearer m"})
    assert "viberwatch_spool_damaged_files 1.0" in scraped.get_data(as_text=True)
    status = app.test_cli_runner().invoke(args=["spool", "status"]).output
    assert kept.name in status and "could not be applied" in status
    # A second drain applies nothing again, and leaves the kept file alone.
    with app.app_context():
        assert ingest.drain(writer.folder, None, 10) == "done"
    assert kept.exists() and raw_count(app, "dmg-") == 3


def test_a_record_cut_short_by_a_crash_keeps_its_file(app):
    writer = ingest.writer_of(app)
    f = spool.SpoolFile(spool.ensure(writer.folder), writer.spooler.keys)
    f.append([line("crash-1"), line("crash-2")])
    f.close()
    with open(f.path, "ab") as raw:
        raw.write(b'0123abcd {"n": 3, "endpoint": "dr", "rec')
    with app.app_context():
        assert ingest.drain(writer.folder, None, 10) == "done"
    assert set(statuses(app, "crash-1", "crash-2")) == {"crash-1", "crash-2"}
    assert f.path.with_name(f.path.name + spool.DAMAGED_SUFFIX).exists()


# --- a full disk under the production command ----------------------------------------------------


def server(outage, tmp_path, disk: Path, n: int = 0):
    env = {**outage.env, "WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "8"}
    env["VIBERWATCH_SPOOL_FOLDER"] = str(disk)
    return production_process(env, tmp_path / f"gunicorn-{n}.log")


def post(url: str, data: bytes) -> int:
    return httpx.post(
        url + DR, content=data, headers={"Content-Type": "application/json"}, timeout=60
    ).status_code


def fill_the_disk(url: str, disk: SmallDisk) -> None:
    """The issue's steps: a receipt spooled, a 150 KB one refused mid-record (503), room made,
    two more spooled."""
    assert post(url, encoded(receipt("full-1"))) == 200
    assert post(url, encoded(receipt("full-big", pad=150_000))) == 503
    disk.grow("1m")
    assert post(url, encoded(receipt("full-2"))) == 200
    assert post(url, encoded(receipt("full-3"))) == 200


def assert_all_applied(app, url: str | None = None) -> None:
    want = {"full-1": "delivered", "full-2": "delivered", "full-3": "delivered"}
    until(lambda: statuses(app, *want) == want, 60, "every body answered 200 to be applied")
    assert raw_count(app, "full-big") == 0  # answered 503: not kept
    if url is not None:
        until(lambda: httpx.get(url + "/healthz").json()["status"] == "ok", 30, "health ok")
        assert post(url, encoded(receipt("full-after"))) == 200
        assert statuses(app, "full-after") == {"full-after": "delivered"}


def test_a_full_spool_disk_loses_nothing_answered_200(app, outage, tmp_path):
    with small_disk(tmp_path / "disk") as disk, server(outage, tmp_path, disk.path) as (url, _):
        outage.begin()
        fill_the_disk(url, disk)
        outage.end()
        assert_all_applied(app, url)
        assert not list(disk.path.iterdir())  # drained whole: nothing kept as damaged


def test_a_full_spool_disk_then_a_restart_loses_nothing_answered_200(app, outage, tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        with server(outage, tmp_path, disk.path) as (url, _):
            outage.begin()
            fill_the_disk(url, disk)
        assert list(disk.path.glob("*.spool"))  # stopped with the database away
        outage.end()
        with server(outage, tmp_path, disk.path, 1) as (url, _):
            assert_all_applied(app, url)
        assert not list(disk.path.glob("*.spool*"))


# --- servers sharing a folder ---------------------------------------------------------------------


@pytest.fixture
def second_database(request, tmp_path):
    """Another database of the same kind as the test's, with the tables made."""
    if request.config.getoption("--db") != "postgresql":
        url = "sqlite:///" + str(tmp_path / "second.db")
        yield url
        return
    with postgres_schema(request.getfixturevalue("postgres_admin")) as url:
        yield url


def test_servers_sharing_a_spool_folder_drain_only_their_own_database(
    app, app_config, outage, second_database, tmp_path
):
    other = create_app({**app_config, "SQLALCHEMY_DATABASE_URI": second_database})
    with other.app_context():
        db.create_all()
    shared = tmp_path / "shared-spool"
    env = {"WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "8"}
    env["VIBERWATCH_SPOOL_FOLDER"] = str(shared)
    env["VIBERWATCH_SPOOL_RETRY_SECONDS"] = "0.2"
    outage.begin()
    with production_process({**outage.env, **env}, tmp_path / "a.log") as (url, _):
        for i in range(5):  # each spooled: its database is away
            assert post(url, encoded(receipt(f"shared-a-{i}"))) == 200
    left = list(shared.glob("*.spool"))
    assert len(left) == 1
    b_env = {**env, "DATABASE_URL": second_database}
    with production_process(b_env, tmp_path / "b.log") as (url, _):
        assert post(url, encoded(receipt("shared-b-1"))) == 200
        until(lambda: statuses(other, "shared-b-1"), 10, "the other server's own body")
        for _ in range(10):  # each request looks for spools left behind
            httpx.get(url + "/healthz")
        assert httpx.get(url + "/healthz").json()["spool"]["bodies"] == 0
        b_log = (tmp_path / "b.log").read_text()
    assert statuses(other, *[f"shared-a-{i}" for i in range(5)]) == {}
    assert list(shared.glob("*.spool")) == left
    assert "another database's" in b_log
    outage.end()
    with production_process({**outage.env, **env}, tmp_path / "a2.log") as (url, _):
        want = {f"shared-a-{i}": "delivered" for i in range(5)}
        until(lambda: statuses(app, *want) == want, 30, "its own spool to be drained")
    other_writer = ingest.writer_of(other)
    with other.app_context():
        db.session.remove()
        db.engine.dispose()
    ingest.stop(other)
    assert other_writer.spooler.keys.database != ingest.writer_of(app).spooler.keys.database


def test_a_file_written_under_another_address_is_applied_when_an_operator_says_so(app):
    writer = ingest.writer_of(app)
    moved = spool.Keys(
        spool.database_digest("sqlite:////an-old-address.db"), writer.spooler.keys.secret
    )
    f = spool.SpoolFile(spool.ensure(writer.folder), moved)
    f.append([line("moved-1"), line("moved-2")])
    f.close()
    with app.app_context():
        assert ingest.drain(writer.folder, None, 10) == "done"
    assert statuses(app, "moved-1") == {} and f.path.exists()
    runner = app.test_cli_runner()
    refused = runner.invoke(args=["spool", "drain", "--file", str(f.path)]).output
    assert "applied 0 bodies" in refused and "--any-database" in refused
    out = runner.invoke(args=["spool", "drain", "--file", str(f.path), "--any-database"]).output
    assert "applied 2 bodies" in out, out
    assert set(statuses(app, "moved-1", "moved-2")) == {"moved-1", "moved-2"}
    assert not f.path.exists()


# --- what others may put in the folder ------------------------------------------------------------


def test_a_spool_folder_open_to_others_is_closed_at_start(app_config, tmp_path):
    folder = tmp_path / "open-spool"
    folder.mkdir()
    folder.chmod(0o777)
    app_config["SPOOL_FOLDER"] = str(folder)
    create_app(app_config)
    assert oct(folder.stat().st_mode & 0o777) == "0o700"


def test_a_spool_folder_of_another_user_open_to_others_is_refused(app_config, tmp_path):
    need_root()
    folder = tmp_path / "their-spool"
    folder.mkdir()
    folder.chmod(0o777)
    os.chown(folder, NOBODY, NOBODY)
    app_config["SPOOL_FOLDER"] = str(folder)
    with pytest.raises(spool.SpoolError, match="another user"):
        create_app(app_config)


def legacy_line(n: int, rid: str) -> bytes:
    """A line as the version before signatures wrote it."""
    record = spool.Record(n, "dr", AT, "application/json", {}, "203.0.113.9", encoded(receipt(rid)))
    return record.content() + b"\n"


def test_planted_copied_and_foreign_owned_files_are_never_applied(app, tmp_path, app_logs):
    need_root()
    writer = ingest.writer_of(app)
    folder = spool.ensure(writer.folder)
    prefix = writer.spooler.keys.database
    # Unsigned lines in the format of the version before signatures.
    unsigned = folder / f"{prefix}-planted-1-1{spool.SUFFIX}"
    unsigned.write_bytes(legacy_line(1, "planted-1") + legacy_line(2, "planted-2"))
    # Signed, with another secret.
    stranger = spool.SpoolFile(folder, spool.Keys(prefix, spool.signing_key("another secret")))
    stranger.append([line("planted-3")])
    stranger.close()
    # A genuine record, copied into a file of another name.
    genuine = spool.SpoolFile(folder, writer.spooler.keys)
    genuine.append([line("copied-1")])
    genuine.close()
    copy = folder / f"{prefix}-copy-1-1{spool.SUFFIX}"
    copy.write_bytes(genuine.path.read_bytes())
    genuine.path.unlink()
    genuine.path.with_suffix(spool.STATUS_SUFFIX).unlink()
    # Genuine, signed with this server's key, but owned by another user.
    theirs = spool.SpoolFile(folder, writer.spooler.keys)
    theirs.append([line("theirs-1")])
    theirs.close()
    os.chown(theirs.path, NOBODY, NOBODY)
    with app.app_context():
        assert ingest.drain(folder, None, 10) == "done"
    rids = ["planted-1", "planted-2", "planted-3", "copied-1", "theirs-1"]
    assert statuses(app, *rids) == {}
    for path in (unsigned, Path(stranger.path), copy):
        assert path.with_name(path.name + spool.DAMAGED_SUFFIX).exists(), path
    assert theirs.path.exists()  # not read at all
    assert "not a file of this server's user" in app_logs.text
    # An operator who knows the unsigned file is the older version's own applies it.
    kept = unsigned.with_name(unsigned.name + spool.DAMAGED_SUFFIX)
    out = app.test_cli_runner().invoke(args=["spool", "drain", "--file", str(kept), "--unsigned"])
    assert "applied 2 bodies" in out.output, out.output
    assert set(statuses(app, *rids)) == {"planted-1", "planted-2"}


# --- a steady flow -----------------------------------------------------------------------------


def test_the_spool_ends_while_bodies_keep_arriving(outage, app):
    """Once the database is back, a body arrives (and is spooled, behind the ones being
    applied) each time the drainer commits: the drainer catches up with them all the same
    (the last few applied with appends held off) and the writer goes direct again while they
    still arrive."""
    import threading

    from sqlalchemy import event

    writer = ingest.writer_of(app)

    def send(rid: str) -> None:
        with app.app_context():
            assert ingest.ingest("dr", encoded(receipt(rid)), "application/json", {}).ok

    outage.begin()
    early = [f"flow-early-{i}" for i in range(300)]
    for rids in (early[i : i + 50] for i in range(0, len(early), 50)):
        threads = [threading.Thread(target=send, args=(r,)) for r in rids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert writer.spooler.active
    arrivals: list[threading.Thread] = []
    most = 200

    def arrive(*_args) -> None:
        # The next body is spooled before the drainer looks again, unless appends are held.
        if threading.current_thread().name == "ingest-drainer" and len(arrivals) < most:
            arrivals.append(threading.Thread(target=send, args=(f"flow-{len(arrivals)}",)))
            arrivals[-1].start()
            arrivals[-1].join(0.5)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "commit", arrive)
    try:
        outage.end()
        until(lambda: not writer.spooler.active, 60, "the spool to end")
        ended_after = len(arrivals)
    finally:
        event.remove(engine, "commit", arrive)
        for t in list(arrivals):
            t.join(30)
    assert ended_after < most, "the spool ended only once the bodies stopped arriving"
    want = early + [f"flow-{i}" for i in range(len(arrivals))]
    until(lambda: len(statuses(app, *want)) == len(want), 30, "every body to be applied")
    assert not list(writer.folder.glob("*.spool*"))
