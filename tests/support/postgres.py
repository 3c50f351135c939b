"""A PostgreSQL schema of its own for one test, in the TEST_DATABASE_URL database."""

import uuid
from contextlib import contextmanager

from sqlalchemy.engine import make_url


@contextmanager
def postgres_schema(admin_and_url):
    """The URL of a fresh schema in the TEST_DATABASE_URL database, dropped afterwards."""
    admin, url = admin_and_url
    schema = "vwtest_" + uuid.uuid4().hex[:16]
    admin.execute(f'CREATE SCHEMA "{schema}"')
    # Every connection of the test (app, CLI, worker processes) sees only this schema.
    yield (
        make_url(url)
        .set(drivername="postgresql+psycopg")
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    admin.execute("SET lock_timeout = '10s'")
    admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
