"""The history database: SQLite always, and a real PostgreSQL server (pgserver) started once."""

from __future__ import annotations

import warnings
from datetime import datetime
from pathlib import Path

import pytest
from conftest import results_document as document
from sqlalchemy import MetaData, Table, create_engine, inspect, update

from stage_acceptance.history import (VERSION_TABLE, Base, History, HistoryError, check_text, describe_url,
                                      history_url, metrics_of, schema_head)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A PostgreSQL server for this test session (pgserver ships its binaries); fails, never skips."""
    try:
        with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR not set (root in CI)
            warnings.simplefilter("ignore")
            import pgserver

            server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    except Exception as exc:  # any failure to start is a test failure, with the reason
        pytest.fail(f"cannot start the PostgreSQL test server (pip install pgserver): {type(exc).__name__}: {exc}",
                    pytrace=False)
    yield server
    server.cleanup()


def _drop_all(url) -> None:
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    if inspect(engine).has_table(VERSION_TABLE):
        Table(VERSION_TABLE, MetaData(), autoload_with=engine).drop(engine)
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """The URL of an empty history database of each kind."""
    if request.param == "sqlite":
        yield history_url(str(tmp_path / "reports" / "history.sqlite"), tmp_path)
        return
    server = request.getfixturevalue("postgres_server")
    address = history_url(server.get_uri(), tmp_path)
    _drop_all(address)
    yield address
    _drop_all(address)


def test_a_run_is_recorded_from_its_results_json(url):
    doc = document(backlash_nm=4.0, tests={"passed": 21, "failed": 0, "skipped": 0})
    with History(url) as history:
        entry_id = history.record(doc, report="/r/sim.html", results="/r/sim.json",
                                  note="service visit: x motor replaced", label="SN 1234")
        [entry] = history.runs()
    assert entry.id == entry_id
    assert (entry.instrument, entry.holder, entry.label, entry.source) == ("sim", "default", "SN 1234", "live")
    assert (entry.verdict, entry.case, entry.version) == ("accepted", "a", "0.1.0")
    assert entry.measured_utc == datetime(2026, 1, 10, 8, 0) and entry.analysed_utc == datetime(2026, 1, 10, 8, 0)
    assert (entry.report_path, entry.results_path, entry.recording_path) == ("/r/sim.html", "/r/sim.json", "/data/rec")
    assert entry.note == "service visit: x motor replaced"
    backlash = entry.metrics["x.backlash_nm"]
    assert (backlash.value, backlash.ci95, backlash.tolerance, backlash.unit, backlash.passed) == \
        (4.0, (2.5, 5.5), 15.0, "nm", True)
    assert entry.metrics["drift_nm_per_min"].value is None and entry.metrics["drift_nm_per_min"].ci95 is None
    assert entry.metrics["pairs.target_actual.rms_nm"].ci95 == (2.0, 4.5)
    assert entry.results == doc  # the whole results JSON, so the two never disagree


def test_runs_are_filtered_ordered_and_the_last_accepted_is_found(url):
    with History(url) as history:
        history.record(document(measured="2026-03-01T00:00:00+00:00", verdict="not accepted", case="f"))
        history.record(document(measured="2026-01-01T00:00:00+00:00"))
        history.record(document(measured="2026-02-01T00:00:00+00:00", backlash_nm=3.0))
        history.record(document(measured="2026-02-15T00:00:00+00:00", holder="jeol-double-tilt"))
        history.record(document(microscope="grandarm", measured="2026-02-20T00:00:00+00:00"))
        dates = [entry.when_utc.month for entry in history.runs("sim", "default")]
        assert dates == [1, 2, 3]
        assert [e.instrument for e in history.runs(holder="jeol-double-tilt")] == ["sim"]
        last = history.last_accepted("sim", "default")
        assert last.metrics["x.backlash_nm"].value == 3.0 and last.verdict == "accepted"
        earlier = history.last_accepted("sim", "default", before=datetime(2026, 2, 1))
        assert earlier.when_utc == datetime(2026, 1, 1)
        assert history.last_accepted("sim", "default", before=datetime(2026, 1, 1)) is None
        assert history.instruments() == [("grandarm", "default"), ("sim", "default"), ("sim", "jeol-double-tilt")]


def test_the_schema_is_made_on_first_use_and_versioned(url):
    History(url).close()
    engine = create_engine(url)
    tables = set(inspect(engine).get_table_names())
    assert {"acceptance_runs", "acceptance_metrics", VERSION_TABLE} <= tables
    with History(url) as history:  # a second opening finds it at the newest revision
        assert history._revision() == schema_head() == "0001"
        history.record(document())
    # a database written by a newer stage-acceptance is refused, not changed
    versions = Table(VERSION_TABLE, MetaData(), autoload_with=engine)
    with engine.begin() as connection:
        connection.execute(update(versions).values(version_num="9999"))
    with pytest.raises(HistoryError, match=r"schema is at revision 9999, which this stage-acceptance does not know"):
        History(url)
    versions.drop(engine)
    with pytest.raises(HistoryError, match="without a schema version"):
        History(url)
    engine.dispose()


def test_the_default_history_is_a_file_beside_the_reports(tmp_path):
    url = history_url(None, tmp_path / "reports")
    assert url.get_backend_name() == "sqlite"
    assert Path(url.database) == (tmp_path / "reports" / "history.sqlite").resolve()
    with History(url) as history:
        history.record(document())
    assert (tmp_path / "reports" / "history.sqlite").is_file()


@pytest.mark.parametrize("value, message", [
    ("mysql://u:secret@host/db", "--history mysql://u:***@host/db: database kind 'mysql' is not supported"),
    ("postgresql://u:secret@host:notaport/db", "--history postgresql://u:***@host:notaport/db: not a database URL"),
    ("sqlite://", "an SQLite history needs a file"),
    ("a\nb", "one line"),
])
def test_a_bad_history_url_is_one_line_naming_it_without_the_password(value, message, tmp_path):
    with pytest.raises(HistoryError) as error:
        history_url(value, tmp_path)
    text = str(error.value)
    assert message in text and "\n" not in text and "secret" not in text


def test_an_unreachable_server_is_one_line_without_the_password(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(HistoryError) as error:
        History(history_url(f"postgresql://user:secret@127.0.0.1:{port}/db", tmp_path))
    assert str(error.value).startswith(f"history postgresql+psycopg://user:***@127.0.0.1:{port}/db: ")
    assert "secret" not in str(error.value) and "\n" not in str(error.value)
    assert describe_url(history_url(f"postgresql://user:secret@h:{port}/db", tmp_path)) == \
        f"postgresql+psycopg://user:***@h:{port}/db"


def test_notes_and_labels_are_bounded_single_lines():
    assert check_text("service visit: x motor replaced", "--note", 2000) == "service visit: x motor replaced"
    with pytest.raises(HistoryError, match="--note: 2001 characters, at most 2000"):
        check_text("x" * 2001, "--note", 2000)
    with pytest.raises(HistoryError, match="--label 'a\\\\nb': must be one line"):
        check_text("a\nb", "--label", 200)
    with pytest.raises(HistoryError, match="--note: must not be empty"):
        check_text("  ", "--note", 2000)


def test_metrics_come_from_the_checks_and_pairs():
    names = [m.name for m in metrics_of(document())]
    assert names == ["x.backlash_nm", "drift_nm_per_min", "pairs.target_actual.rms_nm"]


def test_the_history_command_lists_runs_and_writes_the_trends_page(url, tmp_path, capsys):
    from stage_acceptance.cli import main

    where = url.render_as_string(hide_password=False)
    with History(url) as history:
        history.record(document(measured="2026-01-01T00:00:00+00:00", backlash_nm=1.0), report=str(tmp_path / "a.html"))
        history.record(document(measured="2026-02-01T00:00:00+00:00", backlash_nm=1.5))
        history.record(document(measured="2026-03-01T00:00:00+00:00", backlash_nm=31.0, verdict="not accepted",
                                case="f"), note="service visit: x motor replaced", label="SN 7")
        history.record(document(microscope="grandarm", measured="2026-02-10T00:00:00+00:00"))
    assert main(["history", f"--history={where}", "--microscope", "sim"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["entry", "measured", "(UTC)", "instrument", "holder", "label", "verdict", "case",
                                "note", "report"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]
    assert "service visit: x motor replaced" in lines[3] and "SN 7" in lines[3] and "not accepted" in lines[3]
    page = tmp_path / "trends" / "history.html"
    assert main(["history", f"--history={where}", "--html", str(page)]) == 0
    assert "4 run(s)" in capsys.readouterr().out
    text = page.read_text()
    assert text.count("<section>") == 2  # grandarm and sim, each with its own plots
    sim = text[text.index("<h2>sim, holder default</h2>"):]
    assert sim.index("Latest certificate: NOT ACCEPTED") < sim.index("Metrics over time")
    # one plot per metric measured: x backlash and the target-actual pair (drift never measured)
    assert sim.count("data:image/png;base64,") == 2
    assert "service visit: x motor replaced" in sim
    assert 'src="http' not in text and "<link" not in text and "<script" not in text  # self-contained
    assert main(["history", f"--history={where}", "--microscope", "nothing"]) == 0
    assert "no runs recorded" in capsys.readouterr().out


def test_the_history_command_refuses_a_missing_file_in_one_line(tmp_path, capsys):
    from stage_acceptance.cli import main

    assert main(["history", f"--history={tmp_path / 'none.sqlite'}"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "none.sqlite: no such file" in error
    assert not (tmp_path / "none.sqlite").exists()
