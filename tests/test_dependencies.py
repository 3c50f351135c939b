"""The dependency ranges of pyproject.toml are the ones the code needs: every installed
package is within its range, and the server (which builds on gunicorn's worker internals)
imports with the versions installed."""

from __future__ import annotations

import importlib
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements() -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    listed = project["dependencies"] + project["optional-dependencies"]["dev"]
    return [Requirement(line) for line in listed]


@pytest.mark.parametrize("requirement", requirements(), ids=str)
def test_each_installed_package_is_within_its_range(requirement):
    installed = version(requirement.name)
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{requirement.name} {installed} is outside {requirement.specifier}"
    )


@pytest.mark.parametrize(
    "module", ["app.server.worker", "app.server.loop", "app.server.access_log"]
)
def test_the_server_imports_with_the_installed_versions(module):
    loaded = importlib.import_module(module)
    assert loaded.__name__ == module


def test_the_worker_finds_the_gunicorn_internals_it_builds_on():
    from gunicorn.http.unreader import Unreader
    from gunicorn.workers.gthread import ThreadWorker

    from app.server.worker import SlowClientWorker

    assert issubclass(SlowClientWorker, ThreadWorker)
    assert callable(getattr(Unreader, "take_buffered", None))
    assert "method_queue" in ThreadWorker.__init__.__code__.co_names
