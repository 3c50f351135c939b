"""The committer's frames, both ways: two 4-byte big-endian lengths, then that many bytes of
JSON and of body. A request carries the body and its metadata, an answer the Result (and no
body). And the frames a peer has not read yet, kept for when its socket can take more."""

from __future__ import annotations

import collections
import json
import socket
import struct

from ...core.signing import Signature
from ..jobs import Job

FRAME = struct.Struct("!II")
# Most bodies the committer reads into one batch before applying (INGEST_BATCH_MAX still caps
# a transaction); what is left waits in the sockets for the next round.
READ_CHUNK = 1 << 16
# Answer bytes a worker may leave unread before the committer closes its connection (the
# worker then applies its bodies itself); answers are ~100 bytes, so this is ~100k bodies.
ANSWERS_HELD = 16 << 20


def frame(meta: dict, body: bytes = b"") -> bytes:
    data = json.dumps(meta, separators=(",", ":")).encode()
    return FRAME.pack(len(data), len(body)) + data + body


def job_frame(job: Job) -> bytes:
    sig = job.signature
    return frame(
        {
            "e": job.endpoint,
            "c": job.content_type,
            "h": job.headers,
            "a": job.remote_addr,
            "s": [sig.sign, sig.access_key, sig.ts] if sig is not None else None,
        },
        job.body,
    )


def job_of(meta: dict, body: bytes) -> Job:
    sig = meta.get("s")
    return Job(
        meta["e"],
        body,
        meta.get("c"),
        meta.get("h") or {},
        meta.get("a"),
        signature=Signature(sig[0], sig[1], int(sig[2])) if sig else None,
    )


def frames(buf: bytearray) -> list[tuple[dict, bytes]]:
    """Take every whole frame from the front of `buf`."""
    out = []
    at = 0
    while len(buf) - at >= FRAME.size:
        meta_len, body_len = FRAME.unpack_from(buf, at)
        end = at + FRAME.size + meta_len + body_len
        if len(buf) < end:
            break
        start = at + FRAME.size
        out.append(
            (json.loads(bytes(buf[start : start + meta_len])), bytes(buf[start + meta_len : end]))
        )
        at = end
    del buf[:at]
    return out


class Outgoing:
    """Frames waiting to be written to a socket that is not blocking: what the peer has not
    read yet stays here, and is written when the socket can take more."""

    # Buffers handed to one sendmsg (the kernel takes at most IOV_MAX, 1024 on Linux).
    PARTS = 256

    def __init__(self) -> None:
        self.parts: collections.deque[bytes] = collections.deque()
        self.size = 0  # bytes not yet written
        self.offset = 0  # of the first part, written already

    def __bool__(self) -> bool:
        return self.size > 0

    def add(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)

    def clear(self) -> None:
        self.parts.clear()
        self.size = self.offset = 0

    def flush(self, sock: socket.socket) -> bool:
        """Write what the socket takes now; True when nothing is left. Raises OSError when the
        connection is gone."""
        parts = self.parts
        while parts:
            views = [memoryview(parts[0])[self.offset :]]
            views += [parts[i] for i in range(1, min(len(parts), self.PARTS))]
            try:
                sent = sock.sendmsg(views)
            except (BlockingIOError, InterruptedError):
                return False
            self.size -= sent
            sent += self.offset
            while parts and sent >= len(parts[0]):
                sent -= len(parts.popleft())
            self.offset = sent
        self.offset = 0
        return True
