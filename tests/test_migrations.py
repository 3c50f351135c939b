"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from app import MIGRATIONS, create_app
from app.records import search
from app.records.models import db


@pytest.fixture
def empty_app(database_url):
    """The app on an empty database: no create_all, the migrations build it."""
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url})
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def schema_diff(app) -> list:
    with app.app_context(), db.engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "compare_server_default": False,
                # The text search index is made by its own DDL, not by a model (env.py too).
                "include_name": lambda name, type_, parents: (
                    not (type_ in ("table", "index") and search.owned(name))
                ),
            },
        )
        return compare_metadata(context, db.metadata)


def test_single_head_revision():
    script = ScriptDirectory(MIGRATIONS)
    assert len(script.get_heads()) == 1


def test_upgrade_builds_the_models_schema(empty_app):
    with empty_app.app_context():
        upgrade()
        tables = set(inspect(db.engine).get_table_names())
    assert set(db.metadata.tables) <= tables
    assert schema_diff(empty_app) == []


def test_diff_detects_a_schema_that_differs(empty_app):
    # The comparison is able to fail: a missing index is reported.
    with empty_app.app_context():
        upgrade()
        with db.engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_message_activity")
    diff = schema_diff(empty_app)
    assert any(op[0] == "add_index" and op[1].name == "ix_message_activity" for op in diff)


def test_downgrade_to_base_and_up_again(empty_app):
    with empty_app.app_context():
        upgrade()
        downgrade(revision="base")
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
        upgrade()
    assert schema_diff(empty_app) == []


def test_cli_db_upgrade(empty_app):
    result = empty_app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    with empty_app.app_context():
        assert "message" in inspect(db.engine).get_table_names()
    assert schema_diff(empty_app) == []


def test_rollups_of_messages_stored_before_them_are_filled_by_the_upgrade(empty_app):
    from app.records import rollup
    from app.records.models import LatencyHour, OutcomeHour
    from support.analytics_data import load_fixture
    from test_rollup import stored

    with empty_app.app_context():
        upgrade()
        load_fixture()
        kept = stored()
        assert kept[0] and kept[1]
        db.session.rollback()  # no open read may hold the tables the downgrade drops
        downgrade(revision="0001")
        upgrade()
        assert stored() == kept
        rollup.rebuild()
        assert stored() == kept
        assert db.session.execute(db.select(db.func.count()).select_from(OutcomeHour)).scalar() > 0
        assert db.session.execute(db.select(db.func.count()).select_from(LatencyHour)).scalar() > 0
