"""A local, durable spool for the bodies the database cannot take right now.

While the database is away, each process's ingest writer appends every body it is handed
(received time, endpoint, the headers that matter, the bytes) to a spool file of its own in
`instance/spool/`, flushes and fsyncs it, and only then answers. A drainer applies the
spooled bodies, in the order they arrived, through the normal ingest path as soon as the
database answers again; a spool left by a process that no longer runs is drained by
another one (a process holds a kernel lock on its own file for as long as it lives).

Each body is applied exactly once: how far a file has been applied is kept in the database
(`spool_mark`), committed in the same transaction as the bodies themselves, and every raw
body applied from a spool names its record (`raw_body.spooled`, "file:number").

What a file holds is trusted only as far as it proves it:
- Its name and its first line (the header) name the database it belongs to (a digest of
  the database's address) and the process that wrote it; a server drains only the files of
  its own database, so servers sharing a folder never apply each other's bodies.
- Every line carries an HMAC of its file's name and its content, keyed by the app's secret
  key: a line anyone else wrote (a planted file, a record copied from another file, a line
  changed) is not applied. Files not owned by the server's user are not read at all, and
  the folder is kept 0700.
- A write the disk refused is cut back to the last whole record (or, should that fail too,
  the file is left and the next body starts a new one), so a half-written line never sits
  in front of the records after it.
- A reader skips a line it cannot trust (cut short, not a record, a wrong signature) and
  counts it; a file with such lines, or with bytes after its last whole line, is never
  deleted once drained: it is renamed `<name>.damaged` and reported.

No Flask here: the writer and the CLI hand in folders, keys, bodies and callbacks.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

log = logging.getLogger("viberwatch.spool")

SUFFIX = ".spool"
STATUS_SUFFIX = ".status"
DAMAGED_SUFFIX = ".damaged"
FORMAT = 2


class SpoolError(OSError):
    """The spool folder cannot be used safely."""


@dataclass(frozen=True)
class Keys:
    """What ties a spool file to its server: the database it belongs to and the key that
    signs its lines."""

    database: str  # a digest of the database's address (no password)
    secret: bytes

    @classmethod
    def of(cls, database_url: str, secret_key: str | bytes) -> Keys:
        return cls(database_digest(database_url), signing_key(secret_key))

    def sign(self, name: str, content: bytes) -> str:
        return hmac.new(self.secret, name.encode() + b"\n" + content, hashlib.sha256).hexdigest()


def database_digest(database_url: str) -> str:
    """A short, stable name of a database: its kind, host, port, user, name and options (a
    PostgreSQL schema), never its password; a SQLite file by its real path."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        where = os.path.realpath(url.database) if url.database else ":memory:"
        identity = ["sqlite", where]
    else:
        identity = [
            backend,
            (url.host or "").lower(),
            str(url.port or ""),
            url.username or "",
            url.database or "",
            json.dumps(sorted((k, str(v)) for k, v in url.query.items())),
        ]
    return hashlib.sha256("\0".join(identity).encode()).hexdigest()[:16]


def signing_key(secret_key: str | bytes) -> bytes:
    secret = secret_key.encode() if isinstance(secret_key, str) else secret_key
    return hmac.new(secret, b"viberwatch spool records", hashlib.sha256).digest()


@dataclass(frozen=True)
class Record:
    """One spooled body."""

    n: int  # its number in its file, from 1
    endpoint: str
    received_at: datetime
    content_type: str | None
    headers: dict
    remote_addr: str | None
    body: bytes

    def content(self) -> bytes:
        return json.dumps(
            {
                "n": self.n,
                "endpoint": self.endpoint,
                "received_at": self.received_at.isoformat(),
                "content_type": self.content_type,
                "headers": self.headers,
                "remote_addr": self.remote_addr,
                "body": base64.b64encode(self.body).decode("ascii"),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def of(cls, d: dict) -> Record:
        return cls(
            int(d["n"]),
            str(d["endpoint"]),
            datetime.fromisoformat(d["received_at"]),
            d["content_type"],
            dict(d["headers"]),
            d["remote_addr"],
            base64.b64decode(d["body"], validate=True),
        )


def signed_line(keys: Keys, name: str, content: bytes) -> bytes:
    return keys.sign(name, content).encode() + b" " + content + b"\n"


# Where a signed line starts: a record written after a half-written one (a process whose
# refused write could not be cut back) is found inside the damaged line.
LINE_START = re.compile(rb"[0-9a-f]{64} \{")


def _verified(keys: Keys, name: str, line: bytes) -> dict | None:
    """The JSON object of a whole, signed line; None when it is not one."""
    mac, _, content = line.rstrip(b"\n").partition(b" ")
    try:
        if not hmac.compare_digest(mac.decode("ascii"), keys.sign(name, content)):
            return None
        d = json.loads(content)
    except (UnicodeDecodeError, ValueError):
        return None
    return d if isinstance(d, dict) else None


@dataclass
class Status:
    """Bodies spooled and not yet applied, in one file or all of them."""

    bodies: int = 0
    oldest: datetime | None = None  # received time of the oldest of them
    damaged: int = 0  # files kept because something in them could not be applied

    def add(self, other: Status) -> None:
        self.bodies += other.bodies
        self.damaged += other.damaged
        if other.oldest is not None and (self.oldest is None or other.oldest < self.oldest):
            self.oldest = other.oldest

    def as_json(self, now: datetime | None = None) -> dict:
        now = now or datetime.now(UTC)
        return {
            "bodies": self.bodies,
            "oldest_seconds": round((now - self.oldest).total_seconds(), 3) if self.oldest else 0,
            "damaged_files": self.damaged,
        }


def ensure(folder: Path) -> Path:
    """The spool folder, made 0700 if missing. One of ours that others may write into is
    closed (0700); one of another user that others may write into is refused: whatever is
    planted in it would be read."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(folder)
    if st.st_mode & 0o077:
        if st.st_uid == os.geteuid():
            os.chmod(folder, 0o700)
            log.warning("the spool folder %s was open to others; it is 0700 now", folder)
        elif st.st_mode & 0o022:
            raise SpoolError(
                f"the spool folder {folder} belongs to another user and others may write into "
                "it; give it to this server's user, mode 0700, or set SPOOL_FOLDER"
            )
    return folder


def write_status(path: Path, appended: int, drained: int, oldest: datetime | None) -> None:
    """The file's counts beside it, for banners and metrics that must not read the database
    (written whole and renamed into place, so a reader never sees half of it). Advisory: a
    full disk leaves the last one in place."""
    status = path.with_suffix(STATUS_SUFFIX)
    temporary = status.with_suffix(".tmp")
    try:
        temporary.write_text(
            json.dumps(
                {
                    "appended": appended,
                    "drained": drained,
                    "oldest": oldest.isoformat() if oldest else None,
                }
            )
        )
        os.replace(temporary, status)
    except OSError as exc:
        log.warning("the spool status of %s cannot be written (%s)", path.name, exc)
        temporary.unlink(missing_ok=True)


def mark_drained(path: Path, drained: int, oldest: datetime | None) -> None:
    """A file of a process that has ended: how far it is applied now."""
    try:
        d = json.loads(path.with_suffix(STATUS_SUFFIX).read_text())
    except (OSError, ValueError):
        d = {"appended": drained}
    write_status(path, max(d["appended"], drained), drained, oldest)


def read_status(path: Path) -> Status:
    try:
        d = json.loads(path.with_suffix(STATUS_SUFFIX).read_text())
    except (OSError, ValueError):
        return Status()
    pending = max(0, d["appended"] - d["drained"])
    return Status(pending, datetime.fromisoformat(d["oldest"]) if pending and d["oldest"] else None)


def files(folder: Path, keys: Keys, suffix: str = SUFFIX) -> list[Path]:
    """This database's spool files in the folder (in the order they were started, within a
    process), left out those not owned by this server's user and anything but plain files."""
    out = []
    for path in sorted(folder.glob(f"{keys.database}-*{suffix}")):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
            out.append(path)
        else:
            _report_once(path, "not a file of this server's user: it is not read")
    return out


def others(folder: Path, keys: Keys) -> list[Path]:
    """Spool files in the folder that are not this database's (another server's, or an
    older version's without a database in their name): never drained here."""
    return [p for p in sorted(folder.glob("*" + SUFFIX)) if not p.name.startswith(keys.database)]


def status(folder: Path, keys: Keys) -> Status:
    """Every spool file of this database in the folder together."""
    total = Status()
    for path in files(folder, keys):
        total.add(read_status(path))
    total.damaged = len(files(folder, keys, DAMAGED_SUFFIX))
    return total


_reported: set[tuple[str, str]] = set()


def _report_once(path: Path, what: str) -> None:
    if (str(path), what) not in _reported:
        _reported.add((str(path), what))
        log.error("spool file %s: %s", path.name, what, extra={"event": "spool_skipped"})


def report_others(folder: Path, keys: Keys) -> None:
    for path in others(folder, keys):
        _report_once(path, "another database's (or an older version's): it is not drained here")


class SpoolFile:
    """This process's append-only spool file, locked for as long as it is open."""

    def __init__(self, folder: Path, keys: Keys):
        self.keys = keys
        self.name = f"{keys.database}-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        self.path = folder / (self.name + SUFFIX)
        self.fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
        )
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.size = 0  # bytes of whole lines
        self.appended = 0
        self.drained = 0
        self.oldest: datetime | None = None  # of the bodies not yet drained
        # Set when a refused write could not be cut back: the next body starts a new file.
        self.broken = False
        # The drainer's place: bytes of the file applied (to the end of a record or a damaged
        # line after it), and the lines it skipped there as damaged.
        self.drained_offset = 0
        self.damaged_seen = 0
        header = {
            "spool": FORMAT,
            "database": keys.database,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "created": datetime.now(UTC).isoformat(),
        }
        try:
            self._write(signed_line(keys, self.name, json.dumps(header).encode()))
            # The new name must survive a crash too.
            directory = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError:
            os.close(self.fd)
            self.path.unlink(missing_ok=True)
            raise
        write_status(self.path, 0, 0, None)

    def _write(self, data: bytes) -> None:
        """Write whole lines durably, or leave the file as it was (raises OSError)."""
        try:
            written = 0
            while written < len(data):
                written += os.write(self.fd, data[written:])
            os.fsync(self.fd)
        except OSError:
            try:
                os.ftruncate(self.fd, self.size)
                os.fsync(self.fd)
            except OSError:
                self.broken = True
            raise
        self.size += len(data)

    def append(self, bodies: list[tuple]) -> None:
        """Append (endpoint, received_at, content_type, headers, remote_addr, body) tuples and
        make them durable (write, fsync); raises OSError when the disk refuses, leaving the
        file as it was."""
        lines = []
        for i, (endpoint, received_at, content_type, headers, remote_addr, body) in enumerate(
            bodies, 1
        ):
            record = Record(
                self.appended + i, endpoint, received_at, content_type, headers, remote_addr, body
            )
            lines.append(signed_line(self.keys, self.name, record.content()))
        self._write(b"".join(lines))
        if self.oldest is None and bodies:
            self.oldest = bodies[0][1]
        self.appended += len(bodies)
        write_status(self.path, self.appended, self.drained, self.oldest)

    def close(self) -> None:
        os.close(self.fd)


def name_of(path: Path) -> str:
    """A spool file's name (what its lines are signed with), kept or not as damaged."""
    return path.name.removesuffix(DAMAGED_SUFFIX).removesuffix(SUFFIX)


class Reader:
    """A spool file's records in order, as far as they can be trusted: lines cut short, not
    records or wrongly signed are skipped and counted (`damaged`), bytes after the last
    whole line are left (`unread`), and a file of another database yields nothing
    (`foreign`). An operator may take a file of another database (`any_database`) or the
    unsigned lines of an older version's file (`unsigned`)."""

    def __init__(
        self,
        path: Path,
        keys: Keys,
        after: int = 0,
        upto: int | None = None,
        *,
        start: int = 0,
        any_database: bool = False,
        unsigned: bool = False,
    ):
        self.path = path
        self.keys = keys
        self.after = after
        self.upto = upto  # read no further than this many bytes (a file being written)
        # Where to begin: a line's start past the header, in a file read before by this process.
        self.start = start
        self.any_database = any_database
        self.unsigned = unsigned
        self.damaged = 0
        self.unread = 0
        self.consumed = start  # bytes of whole lines read (to the end of the record handed out)
        self.taken = 0  # records handed out
        self.foreign = False
        self.header: dict | None = {} if start else None  # the header was read then

    def __iter__(self) -> Iterator[Record]:
        name = name_of(self.path)
        at = self.start
        with open(self.path, "rb") as f:
            f.seek(self.start)
            for line in f:
                if self.upto is not None and at + len(line) > self.upto:
                    break
                at += len(line)
                if not line.endswith(b"\n"):
                    self.unread = len(line)  # a write that never finished (never answered)
                    break
                self.consumed = at
                d = _verified(self.keys, name, line)
                if d is None and self.unsigned and line.startswith(b"{"):
                    d = _unsigned(line)  # an older version's line: no signature to check
                if self.header is None and (d is None or "spool" in d):
                    self.header = d or {}
                    if d is None or d.get("spool") != FORMAT:
                        self.damaged += 1
                    elif d.get("database") != self.keys.database and not self.any_database:
                        self.foreign = True
                        return
                    continue
                self.header = self.header or {}
                record = _record(d)
                if record is None:
                    self.damaged += 1
                    # The line may end with a whole record after the damaged start.
                    for match in LINE_START.finditer(line, 1):
                        record = _record(_verified(self.keys, name, line[match.start() :]))
                        if record is not None:
                            break
                    if record is None:
                        continue
                if record.n > self.after:
                    self.taken += 1
                    yield record

    @property
    def whole(self) -> bool:
        """Nothing in the file was skipped or left unread."""
        return not self.damaged and not self.unread and not self.foreign


def _unsigned(line: bytes) -> dict | None:
    try:
        d = json.loads(line)
    except ValueError:
        return None
    return d if isinstance(d, dict) else None


def _record(d: dict | None) -> Record | None:
    try:
        return Record.of(d) if d is not None else None
    except (KeyError, TypeError, ValueError):
        return None


def records(path: Path, keys: Keys, after: int = 0) -> Iterator[Record]:
    """The file's trusted records numbered after `after`, in order."""
    return iter(Reader(path, keys, after))


def claim(path: Path) -> int | None:
    """Lock a spool file whose process has ended; its descriptor, or None while it lives."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def remove(path: Path) -> None:
    """Delete a drained spool file, then its status."""
    path.unlink(missing_ok=True)
    path.with_suffix(STATUS_SUFFIX).unlink(missing_ok=True)


def keep_damaged(path: Path, reader: Reader) -> Path:
    """A drained file with lines that could not be applied or bytes left unread: kept, under
    a name no drain reads again, and reported."""
    kept = path.with_name(path.name + DAMAGED_SUFFIX)
    os.replace(path, kept)
    path.with_suffix(STATUS_SUFFIX).unlink(missing_ok=True)
    log.critical(
        "spool file %s had %d line(s) that could not be trusted and %d byte(s) after its last "
        "whole line; every good record is applied, the file is kept as %s",
        path.name,
        reader.damaged,
        reader.unread,
        kept.name,
        extra={"event": "spool_damaged", "spool": str(kept), "bodies": reader.damaged},
    )
    return kept
