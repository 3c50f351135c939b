"""Waiting for a condition rather than for a fixed time."""

import time
from collections.abc import Callable


def until(condition: Callable[[], object], seconds: float = 10, what: str = "", every=0.05):
    """Poll `condition` until it is true (and return it); fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting{': ' + what if what else ''}"
        time.sleep(every)
    return value
