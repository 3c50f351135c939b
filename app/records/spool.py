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

No Flask here: the writer and the CLI hand in folders, bodies and callbacks.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("viberwatch.spool")

SUFFIX = ".spool"
STATUS_SUFFIX = ".status"


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

    def encode(self) -> bytes:
        return (
            json.dumps(
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
            + b"\n"
        )

    @classmethod
    def decode(cls, line: bytes) -> Record | None:
        """The record of a line, or None for a line cut short (a write the process never
        finished, so never acknowledged)."""
        if not line.endswith(b"\n"):
            return None
        try:
            d = json.loads(line)
            return cls(
                d["n"],
                d["endpoint"],
                datetime.fromisoformat(d["received_at"]),
                d["content_type"],
                d["headers"],
                d["remote_addr"],
                base64.b64decode(d["body"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


@dataclass
class Status:
    """Bodies spooled and not yet applied, in one file or all of them."""

    bodies: int = 0
    oldest: datetime | None = None  # received time of the oldest of them

    def add(self, other: Status) -> None:
        self.bodies += other.bodies
        if other.oldest is not None and (self.oldest is None or other.oldest < self.oldest):
            self.oldest = other.oldest

    def as_json(self, now: datetime | None = None) -> dict:
        now = now or datetime.now(UTC)
        return {
            "bodies": self.bodies,
            "oldest_seconds": round((now - self.oldest).total_seconds(), 3) if self.oldest else 0,
        }


def ensure(folder: Path) -> Path:
    """The spool folder, made (0700) if missing."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def write_status(path: Path, appended: int, drained: int, oldest: datetime | None) -> None:
    """The file's counts beside it, for banners and metrics that must not read the database
    (written whole and renamed into place, so a reader never sees half of it)."""
    status = path.with_suffix(STATUS_SUFFIX)
    temporary = status.with_suffix(".tmp")
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


def status(folder: Path) -> Status:
    """Every spool file of the folder together."""
    total = Status()
    for path in sorted(folder.glob("*" + SUFFIX)):
        total.add(read_status(path))
    return total


class SpoolFile:
    """This process's append-only spool file, locked for as long as it is open."""

    def __init__(self, folder: Path):
        self.name = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        self.path = folder / (self.name + SUFFIX)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        # The new name must survive a crash too.
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self.appended = 0
        self.drained = 0
        self.oldest: datetime | None = None  # of the bodies not yet drained
        write_status(self.path, 0, 0, None)

    def append(self, bodies: list[tuple]) -> None:
        """Append (endpoint, received_at, content_type, headers, remote_addr, body) tuples and
        make them durable (write, fsync); raises OSError when the disk refuses."""
        lines = []
        for i, (endpoint, received_at, content_type, headers, remote_addr, body) in enumerate(
            bodies, 1
        ):
            lines.append(
                Record(
                    self.appended + i,
                    endpoint,
                    received_at,
                    content_type,
                    headers,
                    remote_addr,
                    body,
                ).encode()
            )
        data = b"".join(lines)
        written = 0
        while written < len(data):
            written += os.write(self.fd, data[written:])
        os.fsync(self.fd)
        if self.oldest is None and bodies:
            self.oldest = bodies[0][1]
        self.appended += len(bodies)
        write_status(self.path, self.appended, self.drained, self.oldest)

    def close(self) -> None:
        os.close(self.fd)


def records(path: Path, after: int) -> Iterator[Record]:
    """The file's complete records numbered after `after`, in order."""
    with open(path, "rb") as f:
        for line in f:
            record = Record.decode(line)
            if record is None:
                return
            if record.n > after:
                yield record


def claim(path: Path) -> int | None:
    """Lock a spool file whose process has ended; its descriptor, or None while it lives."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
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
