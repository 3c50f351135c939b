"""Children a test stops with SIGINT, as Ctrl-C stops them in a terminal."""

from __future__ import annotations

import signal
import subprocess


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen(command: list[str], **options) -> subprocess.Popen:
    """subprocess.Popen(command, **options), with SIGINT at its default in the child.

    The suite may be started with SIGINT ignored (a shell's background job, nohup, some CI
    runners), and an ignored signal stays ignored across exec: without this the child, and
    everything it starts, would never see the test's SIGINT. (The child runs nothing but
    signal.signal between fork and exec.)"""
    return subprocess.Popen(command, preexec_fn=_sigint_default, **options)
