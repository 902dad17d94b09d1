"""The history of certifications: every run's instrument, holder, verdict, case and
metrics, kept in a database so that runs can be compared over the life of an
instrument and across a fleet.

A history entry is made FROM a run's results JSON (results-v1 document) and keeps
that document whole, so the two never disagree. The database is an embedded SQLite
file by default (``reports/history.sqlite``, nothing to set up), or any database
SQLAlchemy reaches by URL; PostgreSQL (``postgresql://USER:PASSWORD@HOST/DB``) lets
every microscope PC and analysis machine of a facility or a vendor write to one
server. The same SQLAlchemy models and queries serve both dialects: no SQL text is
written here.

The schema is created on first use and versioned with Alembic: the migrations are in
``stage_acceptance/migrations/versions/``, and the revision a database is at is kept
in its table ``acceptance_schema_version``. Opening a database at an older revision
upgrades it; a database at a revision this version does not know (written by a newer
stage-acceptance) is refused, never changed.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, MetaData, String, Text, create_engine,
                        func, inspect, select)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload

DEFAULT_FILE = "history.sqlite"
"""The default history: this file in the reports folder."""

HISTORY_ENV = "STAGE_ACCEPTANCE_HISTORY"
"""Environment variable naming the history (a URL or a file) when ``--history`` is not
given: a facility sets it once per machine, and ``analyse`` passes it to its runs so
that a password never shows in a process list."""

VERSION_TABLE = "acceptance_schema_version"
"""Alembic's version table: the schema revision a database is at."""

DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}
"""Database backends by URL scheme, and the SQLAlchemy driver each one uses."""

MAX_NOTE_CHARS = 2000
"""Longest ``--note`` (one line)."""
MAX_LABEL_CHARS = 200
"""Longest ``--label`` (a serial number or label of the instrument or holder)."""
MAX_NAME_CHARS = 1000
"""Longest instrument or holder name (as recording-v1 allows)."""
SQLITE_TIMEOUT_S = 30.0
"""How long a writer waits for another process's write to an SQLite history to finish."""


class HistoryError(Exception):
    """The history database cannot be opened, read or written. The message is one line."""


# --------------------------------------------------------------------------- URL and options


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return (text.splitlines() or [type(error).__name__])[0][:200]


def history_url(value: str | None, reports_dir: Path) -> URL:
    """The database URL of ``--history``.

    Parameters
    ----------
    value : str or None
        A database URL (``sqlite:///PATH``, ``postgresql://USER:PASSWORD@HOST:PORT/DB``),
        a file path (an SQLite file), or None: the environment variable
        :data:`HISTORY_ENV` if set, else ``<reports_dir>/history.sqlite``.
    reports_dir : Path
        The reports folder of the run.

    Returns
    -------
    sqlalchemy.engine.URL
        With the driver this installation uses (``postgresql`` is served by psycopg 3).

    Raises
    ------
    HistoryError
        For a malformed URL or a database kind other than SQLite and PostgreSQL.
    """
    if value is None:
        value = os.environ.get(HISTORY_ENV) or None
    if value is None:
        return URL.create("sqlite", database=str(Path(reports_dir).resolve() / DEFAULT_FILE))
    text = str(value)
    if not text.strip() or len(text) > 4096 or not text.isprintable():
        raise HistoryError(f"--history {text[:60]!r}: give a database URL or an SQLite file path "
                           f"(one line, at most 4096 characters)")
    if "://" not in text:
        return URL.create("sqlite", database=str(Path(text).resolve()))
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as exc:
        raise HistoryError(f"--history {_hidden(text)}: not a database URL ({_first_line(exc)})") from None
    backend = url.get_backend_name()
    if backend not in DRIVERS:
        raise HistoryError(f"--history {_hidden(text)}: database kind '{backend}' is not supported; use "
                           f"sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB")
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise HistoryError(f"--history {_hidden(text)}: an SQLite history needs a file: sqlite:///PATH")
        return url.set(drivername="sqlite", database=str(Path(url.database).resolve()))
    if url.drivername == "postgresql":
        url = url.set(drivername=DRIVERS["postgresql"])
    return url


def _hidden(text: str) -> str:
    """A URL for a message: the password hidden, cut to 120 characters."""
    shown = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", text)
    return shown if len(shown) <= 120 else shown[:117] + "..."


def describe_url(url: URL) -> str:
    """The URL for people and messages, without its password (SQLite: the file path)."""
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return url.render_as_string(hide_password=True)


def check_text(value: str | None, option: str, limit: int) -> str | None:
    """A ``--note`` or ``--label``: one printable line of at most `limit` characters.

    Raises
    ------
    HistoryError
        Naming the option and what is wrong.
    """
    if value is None:
        return None
    text = str(value)
    if not text.strip():
        raise HistoryError(f"{option}: must not be empty")
    if len(text) > limit:
        raise HistoryError(f"{option}: {len(text)} characters, at most {limit}")
    if not text.isprintable():
        raise HistoryError(f"{option} {text[:60]!r}: must be one line of printable characters")
    return text


# --------------------------------------------------------------------------- models


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


class RunRow(Base):
    """One certification (a live run or a replay)."""

    __tablename__ = "acceptance_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instrument: Mapped[str] = mapped_column(String(MAX_NAME_CHARS), index=True)
    holder: Mapped[str] = mapped_column(String(MAX_NAME_CHARS), index=True)
    holder_name: Mapped[str | None] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(MAX_LABEL_CHARS))
    source: Mapped[str] = mapped_column(String(20))
    measured_utc: Mapped[datetime | None] = mapped_column(DateTime)
    analysed_utc: Mapped[datetime] = mapped_column(DateTime, index=True)
    verdict: Mapped[str] = mapped_column(String(20))
    case: Mapped[str | None] = mapped_column(String(1))
    note: Mapped[str | None] = mapped_column(Text)
    report_path: Mapped[str | None] = mapped_column(Text)
    results_path: Mapped[str | None] = mapped_column(Text)
    recording_path: Mapped[str | None] = mapped_column(Text)
    version: Mapped[str | None] = mapped_column(String(50))
    results: Mapped[dict] = mapped_column(JSON)
    metrics: Mapped[list[MetricRow]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                    order_by="MetricRow.id")


class MetricRow(Base):
    """One metric of a run with its interval and tolerance."""

    __tablename__ = "acceptance_metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("acceptance_runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    label: Mapped[str | None] = mapped_column(String(200))
    unit: Mapped[str] = mapped_column(String(20))
    value: Mapped[float | None] = mapped_column(Float)
    ci_low: Mapped[float | None] = mapped_column(Float)
    ci_high: Mapped[float | None] = mapped_column(Float)
    tolerance: Mapped[float | None] = mapped_column(Float)
    passed: Mapped[bool | None] = mapped_column(Boolean)
    marginal: Mapped[bool] = mapped_column(Boolean, default=False)
    run: Mapped[RunRow] = relationship(back_populates="metrics")


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class MetricEntry:
    """A metric as the history keeps it."""

    name: str
    label: str
    unit: str
    value: float | None
    ci95: tuple[float, float] | None
    tolerance: float | None
    passed: bool | None
    marginal: bool = False


@dataclass(frozen=True)
class HistoryEntry:
    """A certification as the history keeps it; `results` is its whole results JSON."""

    id: int
    instrument: str
    holder: str
    holder_name: str | None
    label: str | None
    source: str
    measured_utc: datetime | None
    analysed_utc: datetime
    verdict: str
    case: str | None
    note: str | None
    report_path: str | None
    results_path: str | None
    recording_path: str | None
    version: str | None
    metrics: dict[str, MetricEntry] = field(default_factory=dict)
    results: dict = field(default_factory=dict)

    @property
    def when_utc(self) -> datetime:
        """When the instrument was measured (when analysed, if the recording does not say)."""
        return self.measured_utc or self.analysed_utc


PAIR_METRICS = ("target_reported", "target_actual", "reported_actual")
PAIR_LABELS = {"target_reported": "Pair RMS per step, target-reported",
               "target_actual": "Pair RMS per step, target-actual",
               "reported_actual": "Pair RMS per step, reported-actual"}


def utc_naive(text: Any) -> datetime | None:
    """An ISO 8601 time as a naive UTC datetime (None for None or an unreadable time)."""
    if not text or not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _interval(value) -> tuple[float, float] | None:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    low, high = _number(value[0]), _number(value[1])
    return None if low is None or high is None else (low, high)


def metrics_of(document: dict) -> list[MetricEntry]:
    """Every metric of a results-v1 document: its ``checks`` and the RMS per step of its pairs.

    Parameters
    ----------
    document : dict
        A results JSON as written by stage-acceptance.

    Returns
    -------
    list of MetricEntry
        Checks keyed by their name (``x.backlash_nm``), pairs as ``pairs.<pair>.rms_nm``
        (no tolerance: the agreement tolerance is the holder's, not in the document).
    """
    entries = []
    for name, check in (document.get("checks") or {}).items():
        if not isinstance(check, dict):
            continue
        entries.append(MetricEntry(
            name=str(name), label=str(check.get("label") or name), unit=str(check.get("unit") or ""),
            value=_number(check.get("value")), ci95=_interval(check.get("ci95")),
            tolerance=_number(check.get("limit")),
            passed=check.get("passed") if isinstance(check.get("passed"), bool) else None,
            marginal=bool(check.get("marginal"))))
    for pair in PAIR_METRICS:
        values = (document.get("pairs") or {}).get(pair)
        if isinstance(values, dict):
            entries.append(MetricEntry(f"pairs.{pair}.rms_nm", PAIR_LABELS[pair], "nm", _number(values.get("rms_nm")),
                                       _interval(values.get("rms_ci95")), None, None, bool(values.get("marginal"))))
    return entries


def _entry(row: RunRow) -> HistoryEntry:
    metrics = {m.name: MetricEntry(m.name, m.label or m.name, m.unit, m.value,
                                   None if m.ci_low is None or m.ci_high is None else (m.ci_low, m.ci_high),
                                   m.tolerance, m.passed, bool(m.marginal)) for m in row.metrics}
    return HistoryEntry(row.id, row.instrument, row.holder, row.holder_name, row.label, row.source, row.measured_utc,
                        row.analysed_utc, row.verdict, row.case, row.note, row.report_path, row.results_path,
                        row.recording_path, row.version, metrics, dict(row.results or {}))


# --------------------------------------------------------------------------- the store


def _alembic_config(connection=None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "stage_acceptance:migrations")
    config.attributes["connection"] = connection
    return config


def schema_head() -> str:
    """The newest schema revision this version of stage-acceptance knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


class History:
    """A history database: opened (and created or upgraded) on construction.

    Parameters
    ----------
    url : URL or str
        From :func:`history_url` (a string is parsed by it, relative to the current folder).

    Raises
    ------
    HistoryError
        When the database cannot be reached, is at a schema revision this version does
        not know, or holds tables of the same names that were not made by it.
    """

    def __init__(self, url: URL | str):
        self.url = url if isinstance(url, URL) else history_url(url, Path("reports"))
        self.where = describe_url(self.url)
        options: dict[str, Any] = {}
        if self.url.get_backend_name() == "sqlite":
            folder = Path(self.url.database).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise HistoryError(f"history {self.where}: cannot make the folder {folder}: {exc.strerror}") from None
            options["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
        try:
            self.engine: Engine = create_engine(self.url, **options)
        except (NoSuchModuleError, ImportError) as exc:
            raise HistoryError(f"history {self.where}: no database driver for it ({_first_line(exc)})") from None
        try:
            self._migrate()
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise HistoryError(f"history {self.where}: {_first_line(exc)}") from None
        except HistoryError:
            self.engine.dispose()
            raise

    def _revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()

    def _migrate(self) -> None:
        from alembic import command
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError

        script = ScriptDirectory.from_config(_alembic_config())
        head = script.get_current_head()
        current = self._revision()
        if current == head:
            return
        known = {revision.revision for revision in script.walk_revisions()}
        if current is not None and current not in known:
            raise HistoryError(f"history {self.where}: its schema is at revision {current}, which this "
                               f"stage-acceptance does not know (newest here: {head}): it was written by a newer "
                               f"version; upgrade stage-acceptance to use it")
        if current is None:
            tables = set(inspect(self.engine).get_table_names())
            ours = {RunRow.__tablename__, MetricRow.__tablename__} & tables
            if ours:
                raise HistoryError(f"history {self.where}: holds table(s) {', '.join(sorted(ours))} without a schema "
                                   f"version ({VERSION_TABLE}): not a stage-acceptance history; give another --history")
        try:
            with self.engine.begin() as connection:
                command.upgrade(_alembic_config(connection), "head")
        except (SQLAlchemyError, CommandError):
            # Another process may have created the schema at the same moment: fine if it is now at head.
            if self._revision() != head:
                raise

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def record(self, document: dict, *, report: str | Path | None = None, results: str | Path | None = None,
               note: str | None = None, label: str | None = None) -> int:
        """Record a certification from its results JSON.

        Parameters
        ----------
        document : dict
            The run's results-v1 document (as written to its results JSON).
        report, results : str or Path, optional
            Paths of the HTML report and the results JSON.
        note, label : str, optional
            ``--note`` and ``--label`` (checked by :func:`check_text`).

        Returns
        -------
        int
            The id of the new history entry.
        """
        note = check_text(note, "--note", MAX_NOTE_CHARS)
        label = check_text(label, "--label", MAX_LABEL_CHARS)
        analysed = utc_naive(document.get("date_utc")) or datetime.now(timezone.utc).replace(tzinfo=None)
        certification = document.get("certification") or {}
        case = certification.get("case")
        row = RunRow(
            instrument=str(document.get("microscope") or "")[:MAX_NAME_CHARS],
            holder=str(document.get("holder") or "")[:MAX_NAME_CHARS],
            holder_name=document.get("holder_name"),
            label=label,
            source=str(document.get("source") or ""),
            measured_utc=utc_naive(document.get("date_measured_utc")),
            analysed_utc=analysed,
            verdict=str(document.get("verdict") or ""),
            case=case if isinstance(case, str) and len(case) == 1 else None,
            note=note,
            report_path=None if report is None else str(report),
            results_path=None if results is None else str(results),
            recording_path=document.get("session") if isinstance(document.get("session"), str) else None,
            version=document.get("stage_acceptance_version"),
            results=document,
        )
        for metric in metrics_of(document):
            row.metrics.append(MetricRow(
                name=metric.name, label=metric.label, unit=metric.unit, value=metric.value,
                ci_low=None if metric.ci95 is None else metric.ci95[0],
                ci_high=None if metric.ci95 is None else metric.ci95[1],
                tolerance=metric.tolerance, passed=metric.passed, marginal=metric.marginal))
        try:
            with Session(self.engine) as session, session.begin():
                session.add(row)
                session.flush()
                return row.id
        except SQLAlchemyError as exc:
            raise HistoryError(f"history {self.where}: cannot record the run: {_first_line(exc)}") from None

    def runs(self, microscope: str | None = None, holder: str | None = None, *,
             verdict: str | None = None, before: datetime | None = None, newest_first: bool = False,
             limit: int | None = None) -> list[HistoryEntry]:
        """Recorded certifications, in the order the instruments were measured.

        Parameters
        ----------
        microscope, holder : str, optional
            Only this instrument and holder (exact names).
        verdict : str, optional
            Only runs with this verdict (``accepted`` ...).
        before : datetime, optional
            Only runs measured before this time (naive UTC).
        newest_first : bool
        limit : int, optional
            At most this many runs.
        """
        when = func.coalesce(RunRow.measured_utc, RunRow.analysed_utc)
        query = select(RunRow).options(selectinload(RunRow.metrics))
        if microscope is not None:
            query = query.where(RunRow.instrument == microscope)
        if holder is not None:
            query = query.where(RunRow.holder == holder)
        if verdict is not None:
            query = query.where(RunRow.verdict == verdict)
        if before is not None:
            query = query.where(when < before)
        order = (when.desc(), RunRow.analysed_utc.desc(), RunRow.id.desc()) if newest_first else \
            (when, RunRow.analysed_utc, RunRow.id)
        query = query.order_by(*order)
        if limit is not None:
            query = query.limit(limit)
        try:
            with Session(self.engine) as session:
                return [_entry(row) for row in session.scalars(query)]
        except SQLAlchemyError as exc:
            raise HistoryError(f"history {self.where}: cannot read: {_first_line(exc)}") from None

    def last_accepted(self, microscope: str, holder: str, before: datetime | None = None) -> HistoryEntry | None:
        """The last accepted run of this instrument and holder measured before `before` (naive UTC)."""
        runs = self.runs(microscope, holder, verdict="accepted", before=before, newest_first=True, limit=1)
        return runs[0] if runs else None

    def instruments(self) -> list[tuple[str, str]]:
        """Every (instrument, holder) the history holds, sorted."""
        try:
            with Session(self.engine) as session:
                rows = session.execute(select(RunRow.instrument, RunRow.holder).distinct())
                return sorted((str(a), str(b)) for a, b in rows)
        except SQLAlchemyError as exc:
            raise HistoryError(f"history {self.where}: cannot read: {_first_line(exc)}") from None
