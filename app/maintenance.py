"""Commands for data at scale: seed, purge, rebuild."""
from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    pass
