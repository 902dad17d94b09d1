"""pytest plugin: command-line options, session fixtures and pytest-html hooks.

Thin glue (labgrid style): the options become one
:class:`~stage_acceptance.acceptance.AcceptanceRun` kept in ``config.stash``; the
fixtures hand its session, analysis and certificate to the suites; the hooks count
test outcomes, write the results JSON and put the certificate at the top of the
HTML report. The plugin is active for runs that collect the acceptance suites (a
path inside a ``suites`` folder) or that give ``--replay``, ``--record`` or
``--results-json``; ``pytest`` on the framework's own tests leaves it idle, except
that it spreads them over every core (:func:`pytest_load_initial_conftests`).
"""

from __future__ import annotations

import html
import os
import time
from pathlib import Path

import pytest

from .acceptance import AcceptanceRun
from .config import ConfigError
from . import figures as figure_module
from .microscope import BackendError, MoveRefused
from .protocols import FAMILIES, PROTOCOL_NAMES, protocols_for_families
from .report import (baseline_html, certificate_html, figure_anchor, incomplete_html, notes_lines, readback_json,
                     stage_to_image_json)
from .session import RecordingError

RUN_KEY = pytest.StashKey[AcceptanceRun]()
HOOKS_KEY = pytest.StashKey["_RunHooks"]()


PROJECT_TESTS = Path(__file__).resolve().parent.parent / "tests"
"""The framework's own tests (in a source checkout)."""


def pytest_load_initial_conftests(early_config, parser, args):
    """Run the framework's own tests in parallel: plain ``pytest`` (or ``pytest tests``)
    in the project folder gets ``-n auto`` (pytest-xdist, in the ``test`` extra), unless
    the command line already chooses (``-n``, ``--numprocesses``, ``-p no:xdist``).

    Acceptance runs (``pytest suites/``) are never spread: one session drives one
    microscope. Nothing changes when pytest-xdist is not installed.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") or not early_config.pluginmanager.has_plugin("xdist"):
        return
    if any(a in ("-n", "--numprocesses", "--dist") or a.startswith(("-n", "--numprocesses=", "--dist="))
           for a in args):
        return
    plugins = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-p"] + [a[2:] for a in args if a.startswith("-p")]
    if any("xdist" in p for p in plugins):
        return
    values = {args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-p", "-k", "-m", "-c", "-o", "--rootdir")}
    if not PROJECT_TESTS.is_dir():
        return
    here = Path(early_config.invocation_params.dir).resolve()
    paths = [a for a in args if not a.startswith("-") and a not in values]
    if paths:
        targets = {(here / a.split("::", 1)[0]).resolve() for a in paths}
        if targets != {PROJECT_TESTS}:
            return
    elif here != PROJECT_TESTS.parent:
        return
    args[:0] = ["-n", "auto"]


def pytest_addoption(parser):
    group = parser.getgroup("stage-acceptance", "stage acceptance (Fiedler et al. 2023 framework)")
    group.addoption("--microscope", default="sim", metavar="NAME|PATH|tcp://HOST:PORT",
                    help="microscope config: a name under fixtures/microscopes/, a TOML path, or the endpoint of a "
                         "stage-acceptance server (default: sim)")
    group.addoption("--holder", default=None, metavar="NAME|PATH",
                    help="holder tolerance file: a name under fixtures/holders/ or a TOML path "
                         "(default: the holder the microscope config names)")
    group.addoption("--replay", default=None, metavar="DIR",
                    help="analyse this recording-v1 folder instead of moving a stage")
    group.addoption("--record", default=None, metavar="DIR",
                    help="write the session recording here (default: reports/<microscope>-<UTC time>-recording/)")
    group.addoption("--results-json", default=None, metavar="PATH",
                    help="write the results JSON here (default: next to the HTML report)")
    group.addoption("--jobs", default=None, type=int, metavar="N",
                    help="threads registering frame pairs at once (default: every core)")
    group.addoption("--history", default=None, metavar="URL|PATH",
                    help="database the run is recorded in: sqlite:///PATH, postgresql://USER:PASSWORD@HOST/DB or "
                         "an SQLite file (default: reports/history.sqlite)")
    group.addoption("--note", default=None, metavar="TEXT",
                    help="a note recorded with the run in the history, e.g. 'service visit: x motor replaced'")
    group.addoption("--baseline", default=None, metavar="PATH|last",
                    help="compare the run with a baseline: a results JSON, a recording folder (analysed first), or "
                         "'last' (the last accepted run of the same instrument and holder in the history)")
    group.addoption("--label", default=None, metavar="TEXT",
                    help="serial number or label of the instrument or holder, recorded in the history")


def _is_acceptance_run(config) -> bool:
    opts = config.option
    if opts.replay or opts.record or opts.results_json:
        return True
    for arg in config.args:
        if "suites" in Path(str(arg).split("::", 1)[0]).resolve().parts:
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    for family in FAMILIES:
        config.addinivalue_line("markers", f"{family}: stage-acceptance test family '{family}'")
    if not _is_acceptance_run(config):
        return
    from .remote.client import RemoteError

    opts = config.option
    try:
        run = AcceptanceRun(opts.microscope, opts.holder, opts.replay,
                            reports_dir=Path(config.invocation_params.dir) / "reports",
                            html=getattr(opts, "htmlpath", None), results=opts.results_json, record=opts.record,
                            jobs=opts.jobs, history=opts.history, note=opts.note, label=opts.label,
                            baseline=opts.baseline)
    except (ConfigError, RecordingError, RemoteError) as exc:
        raise pytest.UsageError(str(exc)) from None
    # pytest-html reads these options in its own pytest_configure, which runs after this one.
    if hasattr(opts, "htmlpath"):
        opts.htmlpath = str(run.outputs.html)
        opts.self_contained_html = True
    config.stash[RUN_KEY] = run
    hooks = _RunHooks(config, run)
    config.stash[HOOKS_KEY] = hooks
    config.pluginmanager.register(hooks, "stage-acceptance-run")


def _run(config) -> AcceptanceRun:
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        raise pytest.UsageError("stage-acceptance fixtures need an acceptance run: run the suites as "
                                "`pytest suites/` (or give --replay DIR)")
    return run


def _progress(config):
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return lambda name, done, total: None, lambda message: None, lambda done, total: None

    def write(text: str, rewrite: bool = False) -> None:
        def emit():
            if rewrite and reporter.isatty():
                reporter.rewrite(text, erase=True)
            elif not rewrite:
                reporter.write_line(text)

        if capture is not None:
            with capture.global_and_fixture_disabled():
                emit()
        else:
            emit()

    def on_frame(name: str, done: int, total: int) -> None:
        if done == 0:
            write("")
            write(f"stage-acceptance: {name}: moving the stage, {total} frames", rewrite=False)
        elif done < total:
            write(f"  {name}: frame {done}/{total}", rewrite=True)
        else:
            write(f"  {name}: {total}/{total} frames done", rewrite=reporter.isatty())
            if reporter.isatty():
                write("")

    def on_stage(message: str) -> None:
        write(f"stage-acceptance: {message}")

    clock = {"start": None, "shown": 0.0}

    def on_pairs(done: int, total: int) -> None:
        now = time.monotonic()
        if clock["start"] is None:
            clock["start"], clock["shown"] = now, now
        line = pairs_line(done, total, now - clock["start"])
        if reporter.isatty():
            write(line, rewrite=True)
            if done == total:
                write("")
        elif done == total or now - clock["shown"] >= 10.0:  # a quiet line every 10 s in a CI log
            clock["shown"] = now
            write(line)

    return on_frame, on_stage, on_pairs


def pairs_line(done: int, total: int, elapsed_s: float) -> str:
    """``  registered 80/162 pairs, 40.0 pairs/s, 2 s left``."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    if done >= total:
        return f"  registered {done}/{total} pairs in {elapsed_s:.1f} s"
    left = f"{(total - done) / rate:.0f} s left" if rate > 0 else "time left unknown"
    return f"  registered {done}/{total} pairs, {rate:.1f} pairs/s, {left}"


@pytest.fixture(scope="session")
def acceptance_run(request) -> AcceptanceRun:
    """The acceptance run of this pytest session (options resolved, nothing acquired yet)."""
    return _run(request.config)


@pytest.fixture(scope="session")
def stage_analysis(request, acceptance_run):
    """The analysed session: acquired once (only the protocols the selected tests need).

    A session that stops on the instrument's side (a lost server, a PyJEM or SerialEM
    failure, a move refused part-way) ends the pytest run with one line saying why (no
    traceback) and exit status 1; the run still writes its INCOMPLETE report and
    results.
    """
    from .remote.client import RemoteError

    config = request.config
    hooks = config.stash[HOOKS_KEY]
    on_frame, on_stage, on_pairs = _progress(config)
    stopped = None
    try:
        acceptance_run.session(hooks.protocol_names(), progress=on_frame)
    except (RemoteError, BackendError, MoveRefused) as exc:
        stopped = acceptance_run.incomplete or str(exc).splitlines()[0]
    if stopped is not None:  # outside the except block: nothing chained to show
        pytest.exit(f"stage-acceptance: {stopped}", returncode=pytest.ExitCode.TESTS_FAILED)
    return acceptance_run.evaluate(progress=on_stage, selected="certification" in hooks.families,
                                   pairs_progress=on_pairs)


@pytest.fixture(scope="session")
def stage_certificate(acceptance_run, stage_analysis):
    """The certificate (case a-f or not certified, accepted or not, reasons)."""
    return acceptance_run.certificate


@pytest.fixture(scope="session")
def stage_verdict(acceptance_run, stage_analysis):
    """The run's one verdict: accepted, not accepted, not certified (or incomplete)."""
    return acceptance_run.verdict


@pytest.fixture(scope="session")
def stage_checks(acceptance_run, stage_analysis):
    """Every metric against the holder tolerance, keyed ``x.backlash_nm`` etc."""
    return acceptance_run.checks


@pytest.fixture(scope="session")
def stage_comparison(acceptance_run, stage_analysis):
    """This run against ``--baseline``: per metric the change, its interval and whether it regressed."""
    if acceptance_run.comparison is None:
        raise pytest.UsageError("the regression tests need a baseline: give --baseline PATH|last")
    return acceptance_run.comparison


@pytest.fixture(scope="session")
def stage_figures(acceptance_run, stage_analysis):
    """PNG figures of the session, keyed by name (``hysteresis-x``, ``cross``, ...)."""
    return acceptance_run.figures()


@pytest.fixture
def attach_figure(extras, stage_figures):
    """``attach_figure(name)`` links this test, in the HTML report, to the figure that
    shows its metric (each figure is embedded once, in the certificate)."""
    import pytest_html

    def attach(name: str) -> None:
        if name in stage_figures:
            title, _ = figure_module.figure_caption(name)
            extras.append(pytest_html.extras.html(
                f'<p>Figure: <a href="#{figure_anchor(name)}">{html.escape(title)}</a> (in the certificate above)</p>'))

    return attach


class _RunHooks:
    """Hooks that only an acceptance run needs; registered by pytest_configure."""

    def __init__(self, config, run: AcceptanceRun):
        self.config = config
        self.run = run
        self.families: set[str] = set()
        self.tests = {"passed": 0, "failed": 0, "skipped": 0}
        self.results_path: Path | None = None
        self.refused = False
        self.history_error: str | None = None

    def protocol_names(self) -> tuple[str, ...]:
        return protocols_for_families(self.families or set(FAMILIES)) or PROTOCOL_NAMES

    def pytest_collection_finish(self, session):
        for item in session.items:  # after -m / -k deselection
            for family in FAMILIES:
                if item.get_closest_marker(family) is not None:
                    self.families.add(family)
        if not session.items:
            return
        # Before any test runs: open the microscope and check the whole plan against the
        # holder's limits, so a refused plan is a usage error and nothing moves.
        from .remote.client import RemoteError

        try:
            self.run.prepare(self.protocol_names())
            self.run.open_history()
        except (MoveRefused, ConfigError, RemoteError, BackendError) as exc:
            self.refused = True
            raise pytest.UsageError(str(exc).splitlines()[0]) from None

    def pytest_unconfigure(self, config):
        self.run.close()
        if self.refused:
            # pytest-html writes a report of no tests even for a usage error; a refused
            # run leaves nothing behind.
            html = self.run.outputs.html
            html.unlink(missing_ok=True)
            if html.parent == self.run.reports_dir and not any(html.parent.iterdir()):
                html.parent.rmdir()

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and not report.passed):
            if report.passed:
                self.tests["passed"] += 1
            elif report.skipped:
                self.tests["skipped"] += 1
            else:
                self.tests["failed"] += 1

    def pytest_sessionfinish(self, session, exitstatus):
        if self.run.incomplete:
            self.run.evaluate_partial()
            if session.exitstatus == pytest.ExitCode.OK:
                # an incomplete session accepts nothing, whatever the selected tests say
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if self.run.analysis is not None:
            self.results_path = self.run.write_results(self.tests)
            from .history import HistoryError

            report = self.run.outputs.html if getattr(self.config.option, "htmlpath", None) else None
            try:
                self.run.record_history(report)
            except HistoryError as exc:
                self.history_error = str(exc)
                if session.exitstatus == pytest.ExitCode.OK:  # every certification is recorded, or the run says so
                    session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        run = self.run
        if run.incomplete:
            terminalreporter.section("stage acceptance: INCOMPLETE RUN", red=True)
            terminalreporter.write_line(run.incomplete)
            if run.session_path:
                terminalreporter.write_line(f"session recording: {run.session_path}")
        if run.verdict is None:
            return
        verdict = run.verdict
        colour = {"accepted": {"green": True}, "not certified": {"yellow": True}}.get(verdict.word, {"red": True})
        terminalreporter.section("stage acceptance", **colour)
        terminalreporter.write_line(f"{run.microscope_name}, holder '{run.holder.key}': {verdict.headline}",
                                    bold=True, **colour)
        for reason in verdict.why:
            terminalreporter.write_line(f"  - {reason}")
        terminalreporter.write_line(f"holder: {run.holder.name} ({run.holder.source})")
        for line in notes_lines(run.analysis):
            terminalreporter.write_line(line)
        minutes = run.instrument_time_s()
        if minutes is not None:
            terminalreporter.write_line(f"instrument time of the session: {minutes / 60:.1f} min "
                                        f"({len(run.analysis.session.frames)} frames)")
        if self.results_path:
            terminalreporter.write_line(f"results JSON: {self.results_path}")
        if run.session_path:
            terminalreporter.write_line(f"session recording: {run.session_path}")
        if run.comparison is not None:
            comparison = run.comparison
            colour = {"red": True} if comparison.regressed else {"yellow": True} if comparison.worse else {"green": True}
            terminalreporter.write_line(f"since the baseline: {comparison.headline()}", **colour)
            for change in comparison.worse + comparison.better:
                terminalreporter.write_line(f"  - {change.describe()}")
            terminalreporter.write_line(f"  baseline: {comparison.source}")
        if run.history_id is not None:
            terminalreporter.write_line(f"history: entry {run.history_id} in {run.history_where}")
        elif self.history_error:
            terminalreporter.write_line(f"history: NOT recorded: {self.history_error}", red=True, bold=True)

    def pytest_html_report_title(self, report):
        report.title = f"Stage acceptance: {self.run.microscope_name}"

    def pytest_html_results_summary(self, prefix, summary, postfix, session):
        run = self.run
        if run.incomplete:
            prefix.append(incomplete_html(run.incomplete, None if run.session_path is None else str(run.session_path)))
        if run.verdict is None:
            return
        if run.comparison is not None:
            prefix.append(baseline_html(run.comparison, run.baseline_figure()))
        figures = run.figures()
        prefix.append(certificate_html(
            run.verdict, run.certificate, run.checks, microscope=run.microscope_name,
            holder=f"{run.holder.name} ({run.holder.key})", holder_source=run.holder.source,
            measured_utc=run.measured_utc, analysed_utc=run.started.isoformat(timespec="seconds"),
            source=run.source_detail, session_path=None if run.session_path is None else str(run.session_path),
            results_path=str(self.results_path) if self.results_path else None,
            instrument_time_s=run.instrument_time_s(), stage_to_image=stage_to_image_json(run.analysis),
            figures=figures, captions={name: figure_module.figure_caption(name) for name in figures},
            not_registered=run.analysis.failed, readback=readback_json(run.analysis),
            image_shift=run.analysis.image_shift,
        ))
