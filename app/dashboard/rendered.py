"""Rendered table rows kept per process: a row is rendered again only when one of its
record's columns changed.

The messages page draws 50 rows and its live feed 50 more; rendering them is most of what
the page costs (docs/benchmarks.md). The newest messages are the ones every operator, tab
and filter change shows again, and a row shows nothing but its record's columns (no user,
no role), so its HTML is kept, keyed by the record's key and checked against every column
of the record, and by the script root the links are made under.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from flask import has_request_context, render_template, request
from markupsafe import Markup

from ..records.models import Activity, Message

# Rows kept per template and process (about 1.5 KB each).
KEPT = 5_000


class RenderedRows:
    """The HTML of `template` for records of `model` (passed to it as `name`)."""

    def __init__(self, template: str, model, name: str, kept: int = KEPT) -> None:
        self.template = template
        self.name = name
        self.kept = kept
        self.columns = tuple(c.key for c in model.__mapper__.column_attrs)
        self.identity = tuple(c.key for c in model.__mapper__.primary_key)
        self._rows: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, record) -> Markup:
        root = request.script_root if has_request_context() else None
        state = (root, tuple(getattr(record, c) for c in self.columns))
        key = tuple(getattr(record, c) for c in self.identity)
        with self._lock:
            kept = self._rows.get(key)
            if kept is not None and kept[0] == state:
                self._rows.move_to_end(key)
                return kept[1]
        html = Markup(render_template(self.template, **{self.name: record}))
        with self._lock:
            self._rows[key] = (state, html)
            self._rows.move_to_end(key)
            while len(self._rows) > self.kept:
                self._rows.popitem(last=False)
        return html

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()


message_row = RenderedRows("partials/_message_row.html", Message, "m")
feed_item = RenderedRows("partials/_feed_item.html", Activity, "a")


def init_app(app) -> None:
    app.add_template_global(message_row, "message_row")
    app.add_template_global(feed_item, "feed_item")
