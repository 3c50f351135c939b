"""The README tells the truth: its configuration table lists the settings of app/config.py (and
only those), every environment name in it is one the app reads, and every `NAME=value` it
shows is a name something reads."""

import os
import re
from datetime import timedelta
from pathlib import Path

import pytest

from app import config, create_app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
NAME = r"[A-Z][A-Z0-9_]*"
# Table rows whose "setting" is described rather than named.
SETTING_OF = {"database": "SQLALCHEMY_DATABASE_URI"}
# Values the app accepts at start-up for settings it parses then; any other setting takes a
# value of the type of its default.
SAMPLES = {
    "SENDTIME_TZ": "UTC+09:00",
    "WEBHOOK_ALLOW_NETWORKS": "10.0.0.0/8",
    "METRICS_ALLOW_NETWORKS": "10.0.0.0/8",
    "PROXY_ALLOW_NETWORKS": "10.0.0.0/8",
    "TRUSTED_PROXIES": "10.0.0.1",
    "ALERT_RULES": "[]",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "NXCLOUD_RATE_TYPE": "Promotional",
    "COOKIE_SECURE": "true",
    "PUBLIC_URL": "https://watch.example.com/vw",
    "WEBHOOK_SIGN_ACTIONS": '{"dr": "receipt", "message": "reply"}',
}
# Settings refused without their partner: the partner is set (with this one's value before,
# where it needs one), then this one changes.
PARTNERS = {
    "WEBHOOK_SIGN_ACCESS_KEY": ("VIBERWATCH_WEBHOOK_SIGN_SECRET", "partner-value", "value-before"),
    "WEBHOOK_SIGN_SECRET": ("VIBERWATCH_WEBHOOK_SIGN_ACCESS_KEY", "partner-value", "value-before"),
    "PROXY_FIX": ("VIBERWATCH_TRUSTED_PROXIES", "10.0.0.1", None),
}


def section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def configuration_table() -> list[tuple[list[str], list[str]]]:
    """(settings, environment names) of each row of the configuration table."""
    rows = []
    for line in section("Configuration").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if (
            not line.startswith("|")
            or len(cells) != 4
            or cells[0] == "setting"
            or re.fullmatch("-+", cells[0])
        ):
            continue
        # A row described rather than named is a setting only when it maps to one; else its
        # environment name is read directly (checked as such below).
        settings = re.findall(rf"`({NAME})`", cells[0]) or (
            [SETTING_OF[cells[0]]] if cells[0] in SETTING_OF else []
        )
        rows.append((settings, re.findall(rf"`({NAME})`", cells[1])))
    return rows


def pairs() -> list[tuple[str, str]]:
    """(setting, environment name) for every name of a row that is a setting; a row that does
    not give one full name per setting pairs its settings with "" (and fails below)."""
    out = []
    for settings, names in configuration_table():
        if len(settings) == 1:
            out += [(settings[0], name) for name in names] or [(settings[0], "")]
        elif settings:
            out += (
                list(zip(settings, names, strict=False))
                if len(names) == len(settings)
                else [(s, "") for s in settings]
            )
    return out


def sample(setting: str, default):
    if setting in SAMPLES:
        return SAMPLES[setting]
    if isinstance(default, bool):
        return "false" if default else "true"
    if isinstance(default, (int, float)):
        return str(default + 1)
    if isinstance(default, timedelta):
        return str(int(default.total_seconds()) + 1)
    return "sample-value"


def test_the_table_is_read():
    rows = configuration_table()
    assert len(rows) > 30 and ("METRICS_TOKEN", "VIBERWATCH_METRICS_TOKEN") in pairs()


@pytest.mark.parametrize("setting, env", pairs())
def test_each_environment_name_in_the_table_sets_its_setting(setting, env, monkeypatch, tmp_path):
    assert env, f"the table gives no full environment name of {setting}"
    for name in [
        n for n in os.environ if n.startswith("VIBERWATCH_") or n in ("DATABASE_URL", "REDIS_URL")
    ]:
        monkeypatch.delenv(name)
    # No secret key is written into the repository's instance folder.
    monkeypatch.setenv("VIBERWATCH_SECRET_KEY_FILE", str(tmp_path / "secret_key"))
    overrides = {"TESTING": True}
    if setting != "SQLALCHEMY_DATABASE_URI":
        overrides["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path}/default.db"
    if setting in PARTNERS:
        partner, partner_value, before_value = PARTNERS[setting]
        monkeypatch.setenv(partner, partner_value)
        if before_value is not None:
            monkeypatch.setenv(env, before_value)
    before = create_app(overrides).config
    if env == "DATABASE_URL":
        value = f"sqlite:///{tmp_path}/from-env.db"
    elif setting == "SECRET_KEY_FILE":
        value = str(tmp_path / "another_secret_key")
    else:
        value = sample(setting, before.get(setting))
    monkeypatch.setenv(env, value)
    after = create_app(overrides).config
    assert after.get(setting) != before.get(setting), f"{env}={value} does not change {setting}"


def read_outside_the_config(name: str) -> bool:
    """A name read straight from the environment by the app, a test or the server configuration,
    or a make variable."""
    python = [
        *ROOT.glob("app/**/*.py"),
        *ROOT.glob("tests/**/*.py"),
        *ROOT.glob("bench/*.py"),
        ROOT / "gunicorn.conf.py",
    ]
    read = re.compile(rf"""(environ(\.get\(|\[)|envvar=|_setting\()["']{name}["']""")
    makefile = (ROOT / "Makefile").read_text()
    return (
        any(read.search(p.read_text()) for p in python)
        or re.search(rf"^{name} \?=", makefile, re.M) is not None
        or any(s.scope == "process" and name in s.env for s in config.SETTINGS)
    )


@pytest.mark.parametrize(
    "names", [names for settings, names in configuration_table() if not settings]
)
def test_environment_only_names_in_the_table_are_read(names):
    assert names and all(read_outside_the_config(n) for n in names), names


def documented(scope: str) -> list[config.Setting]:
    return [s for s in config.SETTINGS if s.documented and s.scope == scope]


def test_the_table_lists_the_settings_of_the_config_module_and_only_those():
    rows = configuration_table()
    named = {s for settings, _ in rows for s in settings} - set(SETTING_OF.values())
    assert named == {s.name for s in documented("app") if not s.label}
    table_env = {name for _, names in rows for name in names}
    config_env = {name for s in [*documented("app"), *documented("process")] for name in s.env}
    assert table_env - config_env == set(), "in the README, not in app/config.py"
    assert config_env - table_env == set(), "in app/config.py, not in the README"


@pytest.mark.parametrize("setting, env", pairs())
def test_each_row_gives_the_environment_names_of_its_setting(setting, env):
    name = {v: k for k, v in SETTING_OF.items()}.get(setting)
    found = next(s for s in config.SETTINGS if s.name == setting or (name and s.label == name))
    assert env in found.env


def test_environment_only_rows_are_the_process_settings():
    rows = [names for settings, names in configuration_table() if not settings]
    assert sorted(n for names in rows for n in names) == sorted(
        n for s in documented("process") for n in s.env
    )


def test_every_assignment_shown_in_the_readme_names_something_read():
    """`LOG_JSON=1` in the prose would do nothing: the environment says VIBERWATCH_LOG_JSON."""
    table = {name for _, names in configuration_table() for name in names}
    shown = set(re.findall(rf"`(?:export )?({NAME})=", README))
    shown |= set(re.findall(rf"^(?:export )?({NAME})=", README, re.M))
    shown |= set(re.findall(rf"\b({NAME})=\S", " ".join(re.findall(r"`(make [^`]+)`", README))))
    assert shown, "the README shows assignments"
    unread = sorted(n for n in shown if n not in table and not read_outside_the_config(n))
    assert unread == []


def test_the_readme_says_the_csv_starts_with_a_byte_order_mark_as_it_does(client):
    """Third-party clients parsing the export must know to skip it."""
    starts_with_bom = client.get("/export.csv").data.startswith("\ufeff".encode())
    described = (
        "byte order mark"
        in section("Operator's guide").split("The CSV is ", 1)[1].split("\n\n", 1)[0]
    )
    assert starts_with_bom and described
