"""docs/operations.md's Postgres ``dagster.yaml``, as written, against a real PostgreSQL server
(tests/postgres.py): Dagster accepts it and keeps its runs, ticks and dynamic partitions
there; and the ``scheme`` line it explains is needed with the drivers this project installs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import dagster as dg
import pytest

from tests.postgres import PostgresServer

OPERATIONS = Path(__file__).parents[2] / "docs" / "operations.md"


def documented_yaml() -> str:
    text = OPERATIONS.read_text()
    section = text[text.index("### Running the daemon against Postgres") :]
    found = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert found is not None, "no yaml block in the Postgres section"
    return found.group(1)


def pointed_at(server: PostgresServer, database: str, text: str) -> str:
    """The documented file with this test server's address and database."""
    for old, new in (
        ("hostname: postgres.internal", "hostname: 127.0.0.1"),
        ("port: 5432", f"port: {server.port}"),
        ("db_name: dagster", f"db_name: {database}"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    return text


def test_the_documented_dagster_yaml_keeps_everything_in_postgres(
    tmp_path: Path, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = postgres_server.make_database("docs")
    (tmp_path / "dagster.yaml").write_text(pointed_at(postgres_server, database, documented_yaml()))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused")  # the test server trusts 127.0.0.1
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        storages = {
            type(instance.run_storage).__name__,
            type(instance.event_log_storage).__name__,
            type(instance.schedule_storage).__name__,
        }
        assert storages == {
            "PostgresRunStorage",
            "PostgresEventLogStorage",
            "PostgresScheduleStorage",
        }
        instance.add_dynamic_partitions("note_files", ["notes/jan.txt", "notes/feb.txt"])
    # a second instance (another pod) sees what the first wrote
    with dg.DagsterInstance.from_config(str(tmp_path)) as other:
        assert other.get_dynamic_partitions("note_files") == ["notes/jan.txt", "notes/feb.txt"]


@pytest.mark.skipif(
    importlib.util.find_spec("psycopg") is not None,
    reason="psycopg 3 is installed here: a bare postgresql:// works",
)
def test_without_the_scheme_line_dagster_cannot_reach_postgres(
    tmp_path: Path, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the comment in the docs says: SQLAlchemy 2.1 takes a bare ``postgresql://`` for
    psycopg 3, and dagster-postgres 0.29 installs only psycopg2."""
    database = postgres_server.make_database("noscheme")
    text = pointed_at(postgres_server, database, documented_yaml())
    without = "\n".join(line for line in text.splitlines() if "scheme:" not in line)
    assert without != text
    (tmp_path / "dagster.yaml").write_text(without + "\n")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused")
    with (
        pytest.raises(ModuleNotFoundError, match="psycopg"),
        dg.DagsterInstance.from_config(str(tmp_path)) as instance,
    ):
        instance.get_runs(limit=1)
