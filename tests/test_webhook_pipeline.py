"""The one webhook pipeline (app/webhooks/pipeline.py): a worker's event loop answers webhooks
without Flask's dispatch, so every request hook the app registers must be accounted for by
the pipeline, and no hook may add to a webhook's answer anything the pipeline's answer lacks.
These fail as soon as the app gains a hook or an answer header the loop would skip (the
loop's answers are compared with the view's byte for byte in tests/test_webhook_loop.py)."""

from __future__ import annotations

import pytest
from flask import g

from app.ingest import Result, unavailable
from app.webhooks import pipeline
from support.bodies import DR, encoded, receipt


def test_every_request_hook_of_the_app_is_accounted_for(app):
    assert pipeline.unaccounted(app) == []


@pytest.mark.parametrize("kind", ["before_request", "after_request", "teardown_request"])
def test_a_hook_added_to_the_app_is_found_unaccounted(app, kind):
    def stamp(*args):
        return args[0] if args else None

    getattr(app, kind)(stamp)
    assert pipeline.unaccounted(app) == [f"{kind}: {stamp.__module__}.{stamp.__qualname__}"]


ANSWERS = {
    "accepted": Result(200, "accepted", 1, "rid"),
    "duplicate": Result(200, "duplicate", 2, "rid"),
    "rejected": Result(422, "rejected", 3, None, error={"error": "x", "field": "status"}),
    "not in time": unavailable("not committed in time"),
}


@pytest.mark.parametrize("kind", list(ANSWERS))
def test_the_apps_answer_hooks_add_nothing_to_the_pipelines_answer(app, kind):
    """Run the app's own after-request handling (hooks and session) on the pipeline's answer,
    inside a webhook's request: not one header changes."""
    with app.test_request_context(DR, method="POST", data=encoded(receipt("hooks-1"))):
        app.preprocess_request()
        g.webhook_result = ANSWERS[kind]
        answer = pipeline.answer(app, ANSWERS[kind])
        before = sorted(answer.headers.items())
        after = app.process_response(answer)
        assert sorted(after.headers.items()) == before
        assert after.get_data() == pipeline.answer(app, ANSWERS[kind]).get_data()


def test_an_answer_header_added_by_a_hook_is_found(app):
    @app.after_request
    def extra_header(response):
        response.headers["X-Added-Later"] = "1"
        return response

    with app.test_request_context(DR, method="POST", data=b"{}"):
        answer = pipeline.answer(app, ANSWERS["accepted"])
        before = sorted(answer.headers.items())
        assert sorted(app.process_response(answer).headers.items()) != before
