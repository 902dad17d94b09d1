"""One acceptance run, independent of pytest: choose the source (a live microscope or
a recording), acquire the session once, analyse, certify, and write the outputs.

The pytest plugin keeps one :class:`AcceptanceRun` per pytest session and exposes it
through fixtures; everything worth testing lives here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from . import __version__
from .analysis import Analysis, analyse
from .certification import Certificate, Check, Verdict, certify, metric_checks, verdict
from .config import (MICROSCOPE_SCHEMA, ConfigError, HolderConfig, MicroscopeConfig, ProtocolConfig,
                     is_shipped_holder, load_holder, load_microscope, schema_problem)
from .baseline import Comparison, compare_results
from .figures import all_figures, figure_hysteresis_since, hysteresis_curve
from .history import (MAX_LABEL_CHARS, MAX_NOTE_CHARS, History, HistoryError, check_text, describe_url, history_url,
                      utc_naive)
from .microscope import Envelope, Microscope, MoveRefused
from .protocols import PROTOCOL_NAMES, Protocol, build
from .report import read_results, results_json, write_json
from .session import RecordingError, RecordingWriter, Session, plan_visits, read_recording, run_protocols


def open_microscope(config: MicroscopeConfig) -> Microscope:
    """Open the backend a microscope config names.

    Raises
    ------
    ConfigError
        For a kind this installation cannot drive.
    RemoteError
        For a remote microscope that does not answer within its ``timeout_s``.
    BackendError
        For a microscope whose PyJEM or SerialEM, detector or camera is missing or fails.
    """
    if config.kind == "sim":
        from .sim.microscope import SimulatedMicroscope

        return SimulatedMicroscope(config)
    if config.kind == "pyjem" and config.pyjem is not None:
        from .backends.pyjem import open_pyjem

        return open_pyjem(config)
    if config.kind == "serialem" and config.serialem is not None:
        from .backends.serialem import open_serialem

        return open_serialem(config)
    if config.kind == "remote" and config.remote is not None:
        from .remote.client import RemoteMicroscope

        return RemoteMicroscope(config.remote.endpoint, config.remote.timeout_s, keys_dir=config.remote.keys)
    raise ConfigError(f"{config.path}: kind = \"{config.kind}\" is not a microscope this version can open")


def served_config(config: MicroscopeConfig) -> MicroscopeConfig:
    """A remote microscope config completed from its server's ``describe``.

    The server names the instrument (the name of the report, the recording and the
    results) and gives the pixel and frame size. Its holder, ``[protocol]`` and
    ``[stage_to_image]`` fill in what the config file leaves out; the file wins key by
    key (``--microscope tcp://HOST:PORT`` gives nothing, so the server decides all).

    Raises
    ------
    RemoteError
        If the server does not answer within ``timeout_s`` or describes itself badly.
    """
    remote = open_microscope(config)
    remote.close()
    protocol = dict(remote.protocol or {})
    for key in config.given:
        if key.startswith("protocol."):
            name = key.split(".", 1)[1]
            protocol[name] = getattr(config.protocol, name)
    return dataclasses.replace(
        config, name=remote.name, pixel_size_nm=remote.pixel_size_nm, frame_px=remote.frame_px,
        holder=config.holder if "holder" in config.given else (remote.holder or config.holder),
        protocol=ProtocolConfig(**protocol),
        stage_to_image=config.stage_to_image if "stage_to_image" in config.given else remote.stage_to_image,
    )


def recording_holder(session: Session, holder: str | None = None) -> HolderConfig:
    """The holder to judge (or serve) a recording with, and where it came from.

    `holder` if given (``--holder``); else the holder the recording names, if that is
    the plain name of a shipped holder file; else ``default``. A recording never
    chooses a tolerance file: a holder it names by path, or by a name that does not
    ship, is not loaded.

    Raises
    ------
    ConfigError
        For a `holder` that cannot be loaded.
    """
    if holder is not None:
        return dataclasses.replace(load_holder(holder), source=f"chosen with --holder {holder}")
    named = session.holder
    if named and is_shipped_holder(named):
        return dataclasses.replace(load_holder(named), source=f"the recording names the shipped holder '{named}'")
    why = (f"the recording names holder {named[:200]!r}, which is not the name of a shipped holder file (a "
           f"recording never chooses a tolerance file)" if named else "the recording names no holder")
    return dataclasses.replace(load_holder("default"), source=f"the shipped default: {why}; give --holder to choose")


def recorded_protocol(session: Session) -> ProtocolConfig | None:
    """The ``[protocol]`` a stage-acceptance recording was made with (None if not stored).

    Raises
    ------
    RecordingError
        If the stored settings are not valid microscope-v1 ``[protocol]`` keys.
    """
    stored = (session.meta.get("stage_acceptance") or {}).get("protocol")
    if stored is None:
        return None
    problem = schema_problem(stored, MICROSCOPE_SCHEMA["properties"]["protocol"])
    if problem:
        raise RecordingError(f"{session.directory / 'session.json'}: stage_acceptance.protocol: {problem}")
    return ProtocolConfig(**stored)


def _position_text(position) -> str:
    x, y, z, alpha, beta = position.as_tuple()
    return f"x {x:g} nm, y {y:g} nm, z {z:g} nm, alpha {alpha:g} deg, beta {beta:g} deg"


def utc_stamp(moment: datetime | None = None) -> str:
    """``YYYYmmddTHHMMSSZ`` for file names."""
    return (moment or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")


@dataclass
class Outputs:
    """Where a run writes its report, results and recording."""

    html: Path
    results_json: Path
    recording: Path | None


def default_outputs(reports_dir: Path, microscope: str, stamp: str, *, html: str | None = None,
                    results: str | None = None, record: str | None = None, replay: bool = False) -> Outputs:
    """Output paths: ``reports/<microscope>-<UTC time>.html`` and friends unless given."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in microscope)
    html_path = Path(html) if html else reports_dir / f"{safe}-{stamp}.html"
    results_path = Path(results) if results else html_path.with_suffix(".json")
    if record:
        recording = Path(record)
    elif replay:
        recording = None
    else:
        recording = reports_dir / f"{safe}-{stamp}-recording"
    return Outputs(html_path, results_path, recording)


class AcceptanceRun:
    """A live or replayed acceptance run.

    Parameters
    ----------
    microscope : str
        Microscope config name or path (ignored with `replay`).
    holder : str or None
        Holder name or path; default: the one the microscope config names, or for a
        replay the recording's holder if it names a shipped holder file, else
        ``default``.
    replay : str or None
        A recording-v1 folder to analyse instead of moving a stage.
    reports_dir : Path
        Folder of the default outputs.
    html, results, record : str or None
        Paths given on the command line (see :func:`default_outputs`).
    history : str or None
        ``--history``: the database URL or SQLite file the run is recorded in
        (default ``<reports_dir>/history.sqlite``); checked here, opened (created on
        first use) by :meth:`open_history`.
    note, label : str or None
        ``--note`` and ``--label`` recorded with the run in the history.
    baseline : str or None
        ``--baseline``: a results JSON, a recording folder (analysed with this run's
        holder), or ``last``: the last accepted run of the same instrument and holder in
        the history, measured before this one.

    Raises
    ------
    ConfigError, RecordingError
        For bad input, before anything moves.
    """

    def __init__(self, microscope: str, holder: str | None, replay: str | None, *, reports_dir: Path,
                 html: str | None = None, results: str | None = None, record: str | None = None,
                 jobs: int | None = None, history: str | None = None, note: str | None = None,
                 label: str | None = None, baseline: str | None = None):
        if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= 256):
            raise ConfigError(f"--jobs {jobs!r}: must be an integer from 1 to 256 (threads registering at once)")
        self.jobs = jobs
        try:
            self.note = check_text(note, "--note", MAX_NOTE_CHARS)
            self.label = check_text(label, "--label", MAX_LABEL_CHARS)
            self.history_url = history_url(history, reports_dir)
        except HistoryError as exc:
            raise ConfigError(str(exc)) from None
        self.history: History | None = None
        self.history_id: int | None = None
        self.document: dict | None = None
        """The results JSON as written (:meth:`write_results`)."""
        self.baseline = baseline
        self.baseline_document: dict | None = None
        self.baseline_source: str | None = None
        self._baseline_recording: Path | None = None
        self.comparison: Comparison | None = None
        """This run against ``--baseline`` (after :meth:`evaluate`)."""
        self.replay = replay
        self.microscope_config: MicroscopeConfig | None = None
        self._session: Session | None = None
        self.analysis: Analysis | None = None
        self.certificate: Certificate | None = None
        self.checks: dict[str, Check] | None = None
        self._figures: dict[str, bytes] | None = None
        self._partial: Session | None = None
        self._microscope: Envelope | None = None
        self._origin = None
        self._protocols: list[Protocol] | None = None
        self.verdict: Verdict | None = None
        self.incomplete: str | None = None
        """Why a live run ended before its last frame (None for a complete run)."""
        self.started = datetime.now(timezone.utc)
        self.reports_dir = Path(reports_dir)
        if replay and record:
            raise ConfigError(f"--record {record}: a replay analyses {replay} and records nothing; drop --record")
        if replay:
            self._session = read_recording(replay)
            if self._session.incomplete:
                self.incomplete = f"the recording is incomplete: {self._session.incomplete}"
            self.microscope_name = self._session.microscope
            self.holder: HolderConfig = recording_holder(self._session, holder)
        else:
            config = load_microscope(microscope)
            if config.kind == "remote":
                config = served_config(config)
            if config.kind == "pyjem" and importlib.util.find_spec("PyJEM") is None:
                raise ConfigError(f"{config.path}: kind = \"pyjem\" needs PyJEM, which is not installed here: run "
                                  f"on the JEOL microscope PC, or serve it from there (stage-acceptance serve "
                                  f"--microscope {config.name}) and give --microscope tcp://HOST:PORT")
            if config.kind == "serialem" and importlib.util.find_spec("serialem") is None:
                raise ConfigError(f"{config.path}: kind = \"serialem\" needs SerialEM's Python module 'serialem', "
                                  f"which is not on the Python path here: run on the SerialEM PC with its "
                                  f"PythonModules folder on PYTHONPATH, or serve it from there (stage-acceptance "
                                  f"serve --microscope {config.name}) and give --microscope tcp://HOST:PORT")
            self.microscope_config = config
            self.microscope_name = config.name
            self.holder = self._load_holder(holder, config)
        self.outputs = default_outputs(reports_dir, self.microscope_name, utc_stamp(self.started), html=html,
                                       results=results, record=record, replay=bool(replay))
        if self.outputs.recording is not None and (self.outputs.recording / "frames.jsonl").exists():
            raise ConfigError(f"{self.outputs.recording}: already holds a recording; choose another --record folder")
        if baseline is not None and baseline != "last":
            self._load_baseline_path(baseline)

    def _load_baseline_path(self, baseline: str) -> None:
        """Check ``--baseline PATH`` now: a results JSON is read, a recording checked (analysed later)."""
        path = Path(baseline)
        if path.is_dir():
            read_recording(path)  # its frames and images are checked now; it is analysed with this run
            self._baseline_recording = path
            self.baseline_source = f"the recording {path}, analysed again with holder '{self.holder.key}'"
        elif path.is_file():
            self.baseline_document = read_results(path)
            self.baseline_source = f"the results JSON {path}"
        else:
            raise ConfigError(f"--baseline {baseline}: no such file or folder (give a results JSON, a recording "
                              f"folder, or 'last')")
    @staticmethod
    def _load_holder(holder: str | None, config: MicroscopeConfig) -> HolderConfig:
        if holder is not None:
            return dataclasses.replace(load_holder(holder), source=f"chosen with --holder {holder}")
        if config.kind != "remote" or "holder" in config.given:
            return dataclasses.replace(load_holder(config.holder),
                                       source=f"named by the microscope config {config.path}")
        endpoint = config.remote.endpoint
        if not is_shipped_holder(config.holder):
            raise ConfigError(f"the server at {endpoint} names holder {config.holder[:200]!r}, which is not the name "
                              f"of a holder shipped here (a server never chooses a tolerance file); give "
                              f"--holder NAME|PATH")
        return dataclasses.replace(load_holder(config.holder), source=f"named by the server at {endpoint}")

    @property
    def source(self) -> str:
        return "replay" if self.replay else "live"

    @property
    def source_detail(self) -> str:
        """The source for people: ``live``, ``live via tcp://HOST:PORT`` or ``replay``."""
        config = self.microscope_config
        if config is not None and config.kind == "remote":
            return f"live via {config.remote.endpoint}"
        return self.source

    @property
    def session_path(self) -> Path | None:
        return Path(self.replay) if self.replay else self.outputs.recording

    def prepare(self, protocol_names=PROTOCOL_NAMES) -> None:
        """Open the microscope and check the whole plan against the holder's limits.

        Live runs only (a replay moves nothing), and once: call it before any test
        runs, so that a plan the holder refuses is a usage error before anything
        moves and before a recording folder is made. A remote microscope's plan is also
        checked against the limits its server says it enforces (``describe``), and the
        run keeps to the stricter of the two on each axis, so the server never has to
        refuse a move part-way through.

        Raises
        ------
        MoveRefused
            Naming the protocol, the target outside the limits and whose limits they
            are (the holder's or the server's); nothing was sent.
        ConfigError, RemoteError, BackendError
            When the microscope cannot be opened.
        """
        if self.replay or self._microscope is not None or self._session is not None:
            return
        config = self.microscope_config
        protocols = build(config.protocol, protocol_names, field_nm=config.frame_px * config.pixel_size_nm,
                          stage_to_image=config.stage_to_image)
        backend = open_microscope(config)
        served = dict(getattr(backend, "limits", None) or {}) if config.kind == "remote" else {}
        where = (config.path or config.remote.endpoint) if config.kind == "remote" else config.path
        judges = [(Envelope(backend, self.holder.limits), f"holder '{self.holder.key}'")]
        if served:
            judges.append((Envelope(backend, {**self.holder.limits, **served}),
                           f"the limits the server at {config.remote.endpoint} enforces"))
        stricter = dict(self.holder.limits)  # the run keeps to the stricter limit on each axis
        for key, (low, high) in served.items():
            if key in stricter:
                stricter[key] = (max(low, stricter[key][0]), min(high, stricter[key][1]))
        microscope = Envelope(backend, stricter)
        try:
            origin = microscope.position()
            for protocol, _, target in plan_visits(protocols, origin):
                for judge, whose in judges:
                    try:
                        judge.check(target)
                    except MoveRefused as exc:
                        raise MoveRefused(f"{where}: protocol {protocol.name} (from the stage's position now, "
                                          f"{_position_text(origin)}) is refused by {whose}: {exc}") from None
        except BaseException:
            microscope.close()
            raise
        self._microscope, self._origin, self._protocols = microscope, origin, protocols

    def open_history(self) -> History:
        """Open the history database (creating or upgrading it on first use), once.

        The pytest plugin calls it before any test runs, after the plan is checked, so an
        unreachable database stops the run before anything moves and a refused plan
        leaves no database file behind.

        Raises
        ------
        ConfigError
            When the database cannot be reached or is not a history this version can use.
        """
        if self.history is None:
            try:
                self.history = History(self.history_url)
            except HistoryError as exc:
                raise ConfigError(str(exc)) from None
            if self.baseline == "last":
                self._baseline_from_history()
        return self.history

    def _baseline_from_history(self) -> None:
        """``--baseline last``: the last accepted run of this instrument and holder, measured before this one."""
        measured = utc_naive(self.measured_utc) or utc_naive(self.started.isoformat())
        try:
            entry = self.history.last_accepted(self.microscope_name, self.holder.key, before=measured)
        except HistoryError as exc:
            raise ConfigError(str(exc)) from None
        if entry is None:
            raise ConfigError(f"--baseline last: the history {self.history_where} holds no accepted run of "
                              f"'{self.microscope_name}' with holder '{self.holder.key}' measured before this one; "
                              f"give --baseline PATH (a results JSON or a recording)")
        self.baseline_document = entry.results
        self.baseline_source = (f"the last accepted run in the history {self.history_where}: entry {entry.id}, "
                                f"measured {entry.when_utc:%Y-%m-%d %H:%M:%S} UTC"
                                + (f", note: {entry.note}" if entry.note else ""))

    def close(self) -> None:
        """Release a microscope that was prepared but never run (leaving the stage), and the history."""
        if self._microscope is not None:
            self._microscope.close()
            self._microscope = None
        if self.history is not None:
            self.history.close()

    def session(self, protocol_names=PROTOCOL_NAMES,
                progress: Callable[[str, int, int], None] | None = None) -> Session:
        """The session: acquired on the first call (live) or the recording (replay).

        Parameters
        ----------
        protocol_names : iterable of str
            Protocols to run (live only): those the selected tests need; ignored when
            :meth:`prepare` already chose them.
        progress : callable, optional
            ``progress(protocol, done, total)`` while the stage moves.
        """
        if self._session is None:
            self.prepare(protocol_names)
            config = self.microscope_config
            microscope, origin, protocols = self._microscope, self._origin, self._protocols
            meta = {
                "microscope": microscope.name,
                "holder": self.holder.key,
                "pixel_size_nm": microscope.pixel_size_nm,
                "notes": f"stage-acceptance {__version__}; protocols: {', '.join(p.name for p in protocols)}",
            }
            if config.stage_to_image is not None:
                meta["stage_to_image"] = {"rotation_deg": config.stage_to_image.rotation_deg,
                                          "flip_y": config.stage_to_image.flip_y}
            # Our extension of session.json (readers keep and ignore unknown keys): what a
            # served replay needs to answer the same moves again.
            meta["stage_acceptance"] = {"version": __version__, "origin": origin.as_dict(),
                                        "protocols": [protocol.name for protocol in protocols],
                                        "protocol": dataclasses.asdict(config.protocol)}
            try:
                writer = RecordingWriter(self.outputs.recording, meta)
                try:
                    self._session = run_protocols(microscope, protocols, writer, settle_s=config.protocol.settle_s,
                                                  origin=origin, progress=progress)
                except BaseException as exc:
                    self._stopped(exc, microscope, writer)
                    raise
            finally:
                microscope.close()
                self._microscope = None
        return self._session

    def _stopped(self, exc: BaseException, microscope: Envelope, writer: RecordingWriter) -> None:
        """Record why a live run stopped early; keep its recording unless it holds no frame."""
        reason = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else str(exc).splitlines()[0]
        if isinstance(exc, KeyboardInterrupt):
            # Ctrl-C: abort the move under way and leave the stage where it is.
            try:
                microscope.stop()
                reason += ", stage stopped where it was"
            except Exception as stop_error:  # the interruption is what the user must see
                reason += f", and stopping the stage failed: {stop_error}"
        partial = writer.close()
        if not partial.frames:
            writer.discard()
            self.outputs.recording = None
            self.incomplete = f"the run stopped before its first frame: {reason}; no recording was kept"
            return
        self.incomplete = (f"the run stopped after {len(partial.frames)} frame(s): {reason}; "
                           f"the recording is intact up to its last frame")
        self._partial = partial

    def _judge(self, selected: bool, progress: Callable[[str], None] | None = None) -> None:
        self.certificate = certify(self.analysis, self.holder, selected=selected)
        self.checks = metric_checks(self.analysis, self.holder)
        self.verdict = verdict(self.certificate, self.checks, self.holder, incomplete=self.incomplete)
        if self.baseline is not None:
            self._compare(progress)

    def _compare(self, progress: Callable[[str], None] | None = None) -> None:
        """Compare this run with its baseline (analysing a baseline recording first)."""
        if self.baseline_document is None and self._baseline_recording is not None:
            if progress is not None:
                progress(f"analysing the baseline recording {self._baseline_recording}")
            before = AcceptanceRun("sim", str(self.holder.path), str(self._baseline_recording),
                                   reports_dir=self.reports_dir, jobs=self.jobs)
            before.evaluate()
            self.baseline_document = before.results({})
        if self.baseline_document is None and self.baseline == "last":
            self.open_history()
        self.comparison = compare_results(self.baseline_document, self._document({}), self.holder.regression,
                                          source=self.baseline_source)

    def baseline_figure(self) -> bytes | None:
        """The Figure 3 hysteresis of the baseline and this run in one plot (PNG), if both have one."""
        if self.comparison is None:
            return None
        before = self.baseline_document.get("hysteresis") or {}
        after = self._document({}).get("hysteresis") or {}
        if not any(before.values()) or not any(after.values()):
            return None
        return figure_hysteresis_since(before, after)

    def evaluate_partial(self) -> Analysis | None:
        """Analyse what an interrupted run recorded, for the partial report.

        Returns
        -------
        Analysis or None
            None when the partial session is too short to analyse.
        """
        if self.analysis is None and self._partial is not None and len(self._partial.frames) >= 2:
            self.analysis = analyse(self._partial)
            self._judge(selected=True)
        return self.analysis

    def evaluate(self, progress: Callable[[str], None] | None = None, *, selected: bool = True,
                 pairs_progress: Callable[[int, int], None] | None = None) -> Analysis:
        """Analyse and certify the session (once).

        Parameters
        ----------
        progress : callable, optional
            Called with a short message at each stage of the analysis.
        selected : bool
            Whether the certification test is part of the run (without it no case is
            certified).
        pairs_progress : callable, optional
            ``pairs_progress(done, total)`` while frame pairs are registered.

        Raises
        ------
        KeyboardInterrupt
            Ctrl-C during the analysis: the run is marked incomplete (nothing is
            accepted) and the recording stays as it is.
        """
        if self.analysis is None:
            session = self.session()
            try:
                self.analysis = analyse(session, jobs=self.jobs, progress=progress, pairs_progress=pairs_progress)
            except KeyboardInterrupt:
                self.incomplete = (f"interrupted (Ctrl-C) during the analysis of {len(session.frames)} frames; "
                                   f"nothing is certified (the recording is kept: analyse it again with --replay)")
                raise
            self._judge(selected, progress)
        return self.analysis

    @property
    def measured_utc(self) -> str | None:
        """When the instrument was measured: now for a live run, the recording's
        ``started`` for a replay (None if it does not say)."""
        session = self._session or self._partial
        if session is not None and session.meta.get("started"):
            return str(session.meta["started"])
        return None if self.replay else self.started.isoformat(timespec="seconds")

    def figures(self) -> dict[str, bytes]:
        """The report's PNG figures, drawn once (requires :meth:`evaluate`)."""
        if self.analysis is None:
            raise RuntimeError("evaluate() first")
        if self._figures is None:
            self._figures = all_figures(self.analysis)
        return self._figures

    def instrument_time_s(self) -> float | None:
        """Instrument time the session took (last frame time), if acquired."""
        session = self._session or self._partial
        if session is None or not session.frames:
            return None
        return float(session.frames[-1].time_s)

    def results(self, tests: dict[str, int]) -> dict:
        """The results-v1 document (requires :meth:`evaluate` to have run), with the
        ``baseline`` section when compared with one."""
        document = self._document(tests)
        if self.comparison is not None:
            document["baseline"] = self.comparison.to_json()
        return document

    def _document(self, tests: dict[str, int]) -> dict:
        if self.analysis is None:
            raise RuntimeError("evaluate() first")
        return results_json(
            self.analysis, self.certificate, self.checks, self.verdict,
            microscope=self.microscope_name, holder=self.holder.key, source=self.source,
            session_path=str(self.session_path), tests=tests,
            extra={"endpoint": self.microscope_config.remote.endpoint
                   if self.microscope_config is not None and self.microscope_config.kind == "remote" else None,
                   "incomplete": self.incomplete, "holder_name": self.holder.name,
                   "holder_source": self.holder.source,
                   "date_utc": self.started.isoformat(timespec="seconds"),
                   "date_measured_utc": self.measured_utc,
                   "instrument_time_s": self.instrument_time_s(), "stage_acceptance_version": __version__,
                   "hysteresis": {axis: curve for axis in ("x", "y")
                                  if (curve := hysteresis_curve(self.analysis, axis)) is not None}},
        )

    def write_results(self, tests: dict[str, int]) -> Path:
        """Write the results JSON (kept as :attr:`document`); return its path."""
        self.document = self.results(tests)
        return write_json(self.document, self.outputs.results_json)

    def record_history(self, report: Path | None) -> int:
        """Record the run, from its results JSON as written, in the history; return the entry's id.

        Raises
        ------
        HistoryError
            When the database cannot be written (one line).
        """
        if self.document is None:
            raise RuntimeError("write_results() first")
        if self.history is None:
            try:
                self.open_history()
            except ConfigError as exc:
                raise HistoryError(str(exc)) from None
        self.history_id = self.history.record(self.document, report=report, results=self.outputs.results_json,
                                              note=self.note, label=self.label)
        return self.history_id

    @property
    def history_where(self) -> str:
        """The history database for people (no password)."""
        return describe_url(self.history_url)
