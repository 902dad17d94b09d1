"""Certifying many recordings in one command: a night of recordings from several
instruments, or all of them again after an analysis upgrade.

Each recording is certified by the acceptance suites in a pytest process of its own,
exactly as ``pytest suites/ --replay DIR`` does it: the same HTML report, results JSON
and history entry. Several run at once: on this machine (``workers`` processes at a
time, driven from a thread pool of :mod:`concurrent.futures`), or on a Dask cluster
(:mod:`distributed`), whose workers must see the recordings, the reports folder and
the history database at the same paths and URL. A recording that cannot be certified
is reported with the reason, in one line, and does not stop the others.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .config import ConfigError
from .history import HISTORY_ENV, MAX_NOTE_CHARS, History, HistoryError, check_text, history_url
from .report import read_results

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
"""The acceptance suites of this checkout."""

MAX_WORKERS = 256
SCHEDULER_TIMEOUT_S = 10.0
"""How long to wait for a Dask scheduler to answer before giving up."""


@dataclass(frozen=True)
class Outcome:
    """What became of one recording."""

    recording: str
    verdict: str | None = None
    case: str | None = None
    report: str | None = None
    results: str | None = None
    exit_code: int | None = None
    error: str | None = None
    """Why the recording could not be certified (one line); None when it was."""
    seconds: float = 0.0

    def line(self) -> str:
        """One line for the terminal."""
        if self.error:
            return f"{self.recording}: FAILED: {self.error}"
        case = f", case {self.case}" if self.case else ""
        return f"{self.recording}: {(self.verdict or 'unknown').upper()}{case} ({self.seconds:.0f} s) -> {self.report}"


def find_recordings(paths: Iterable[str | Path]) -> tuple[list[Path], list[Outcome]]:
    """The recordings named by `paths`: a folder holding ``session.json`` is one; any
    other folder is searched (symlinks not followed) for folders that hold one.

    Returns
    -------
    recordings : list of Path
        Each once, in the order given (sorted within a searched folder).
    problems : list of Outcome
        A path that does not exist or holds no recording, as a failed outcome.
    """
    recordings: list[Path] = []
    problems: list[Outcome] = []
    seen: set[Path] = set()
    for given in paths:
        root = Path(given)
        if not root.is_dir():
            problems.append(Outcome(str(root), error="no such folder"))
            continue
        if (root / "session.json").is_file():
            found = [root]
        else:
            found = []
            for folder, subfolders, files in os.walk(root):
                if "session.json" in files:
                    found.append(Path(folder))
                    subfolders.clear()  # a recording's images/ hold no recording
                else:
                    subfolders.sort()
            found.sort()
        if not found:
            problems.append(Outcome(str(root), error="no recording (a folder with session.json) in it"))
        for recording in found:
            key = recording.resolve()
            if key not in seen:
                seen.add(key)
                recordings.append(recording)
    return recordings, problems


def output_stem(recording: Path, stamp: str, taken: set[str]) -> str:
    """``<recording folder>-analysed-<UTC time>`` (without the folder's ``-recording``), made
    unique among `taken` (which it joins)."""
    name = recording.name.removesuffix("-recording") or recording.name
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "recording"
    stem, n = f"{safe}-analysed-{stamp}", 2
    while stem in taken:
        stem, n = f"{safe}-analysed-{stamp}-{n}", n + 1
    taken.add(stem)
    return stem


def certify_recording(recording: str, html: str, results: str, history: str, *, holder: str | None = None,
                      note: str | None = None, jobs: int = 1) -> Outcome:
    """Certify one recording with the acceptance suites in a pytest process of its own.

    Runs where it is called: in a thread of this machine or on a Dask worker.

    Parameters
    ----------
    recording : str
        A recording-v1 folder.
    html, results : str
        Where its report and results JSON go.
    history : str
        The history database URL, passed to the suites in the environment
        (:data:`~stage_acceptance.history.HISTORY_ENV`), so a password never shows in a
        process list.
    holder, note : str, optional
        ``--holder`` and ``--note`` of the suites.
    jobs : int
        Threads registering frame pairs in that process.

    Returns
    -------
    Outcome
        Never raises: any failure is the outcome's one-line ``error``.
    """
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", str(SUITES_DIR), "-p", "no:cacheprovider", "-q",
               f"--replay={recording}", f"--html={html}", f"--results-json={results}", f"--jobs={jobs}"]
    if holder is not None:
        command.append(f"--holder={holder}")
    if note is not None:
        command.append(f"--note={note}")
    environment = {**os.environ, HISTORY_ENV: history}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=environment, stdin=subprocess.DEVNULL)
    except OSError as exc:
        return Outcome(recording, error=f"cannot start pytest: {exc}", seconds=time.monotonic() - started)
    seconds = time.monotonic() - started
    lines = [line.strip() for line in (done.stderr + "\n" + done.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("ERROR:", "Exit:", "stage-acceptance:"))]
    not_recorded = [line for line in lines if line.startswith("history: NOT recorded")]
    if done.returncode not in (0, 1) or not Path(results).is_file():
        why = (errors or lines or [f"pytest exited {done.returncode}"])[-1]
        return Outcome(recording, exit_code=done.returncode, error=why.removeprefix("ERROR: "), seconds=seconds)
    try:
        document = read_results(results)
    except ConfigError as exc:
        return Outcome(recording, exit_code=done.returncode, error=str(exc), seconds=seconds)
    outcome = Outcome(recording, document.get("verdict"), (document.get("certification") or {}).get("case"), html,
                      results, done.returncode, None, seconds)
    if not_recorded:
        outcome = dataclasses.replace(outcome, error=not_recorded[-1])
    return outcome


def _dask_client(scheduler: str, timeout_s: float):
    try:
        from distributed import Client
    except ImportError as exc:
        raise ConfigError(f"--scheduler {scheduler}: dask.distributed is not installed ({exc})") from None
    try:
        return Client(scheduler, timeout=f"{timeout_s}s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"--scheduler {scheduler}: cannot reach the Dask scheduler: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None


def analyse_recordings(paths: Iterable[str | Path], *, reports_dir: str | Path, history: str | None = None,
                       holder: str | None = None, note: str | None = None, workers: int | None = None,
                       scheduler: str | None = None, stamp: str,
                       progress: Callable[[int, int, Outcome], None] | None = None,
                       scheduler_timeout_s: float = SCHEDULER_TIMEOUT_S) -> list[Outcome]:
    """Certify every recording `paths` name, several at once.

    Parameters
    ----------
    paths : iterable of str or Path
        Recordings, or folders holding recordings (:func:`find_recordings`).
    reports_dir : str or Path
        Where the reports and results JSONs go (``<recording>-analysed-<stamp>.html``).
    history : str, optional
        ``--history`` (default ``<reports_dir>/history.sqlite``); created here once,
        before any recording is certified.
    holder, note : str, optional
        Passed to every certification.
    workers : int, optional
        Recordings certified at once on this machine (1 to 256; default: every core,
        at most one per recording); each registers frame pairs in ``cores / workers``
        threads. Ignored with `scheduler`.
    scheduler : str, optional
        ``tcp://HOST:PORT`` of a Dask scheduler: certify on its workers instead.
    stamp : str
        UTC time of the analysis, for the output names.
    progress : callable, optional
        ``progress(done, total, outcome)`` as each recording finishes.
    scheduler_timeout_s : float
        How long to wait for the scheduler to answer.

    Returns
    -------
    list of Outcome
        One per recording (and per path that names none), in the order finished.

    Raises
    ------
    ConfigError
        For bad options, an unreachable scheduler or history, before any recording is
        certified.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or not 1 <= workers <= MAX_WORKERS):
        raise ConfigError(f"--workers {workers!r}: must be an integer from 1 to {MAX_WORKERS}")
    if scheduler is not None and not (scheduler.startswith("tcp://") and scheduler.rpartition(":")[2].isdigit()
                                      and len(scheduler) <= 200 and scheduler.isprintable()):
        raise ConfigError(f"--scheduler {scheduler[:60]!r}: must be tcp://HOST:PORT")
    try:
        note = check_text(note, "--note", MAX_NOTE_CHARS)
        url = history_url(history, Path(reports_dir))
        History(url).close()  # created (or upgraded) once, before the certifications write to it
    except HistoryError as exc:
        raise ConfigError(str(exc)) from None
    client = _dask_client(scheduler, scheduler_timeout_s) if scheduler is not None else None  # reachable, or stop here
    try:
        return _certify_all(paths, reports_dir=Path(reports_dir), address=url.render_as_string(hide_password=False),
                            holder=holder, note=note, workers=workers, client=client, stamp=stamp, progress=progress)
    finally:
        if client is not None:
            client.close()


def _certify_all(paths, *, reports_dir: Path, address: str, holder, note, workers, client, stamp,
                 progress) -> list[Outcome]:
    reports = reports_dir.resolve()
    reports.mkdir(parents=True, exist_ok=True)
    recordings, outcomes = find_recordings(paths)
    total = len(recordings) + len(outcomes)
    for done, outcome in enumerate(outcomes, start=1):
        if progress is not None:
            progress(done, total, outcome)
    taken: set[str] = set()
    jobs_of = [(str(recording.resolve()), str(reports / f"{stem}.html"), str(reports / f"{stem}.json"))
               for recording in recordings for stem in [output_stem(recording, stamp, taken)]]

    def finished(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if progress is not None:
            progress(len(outcomes), total, outcome)

    if not jobs_of:
        return outcomes
    if client is not None:
        from distributed import as_completed as dask_completed

        futures = {client.submit(certify_recording, recording, html, results, address, holder=holder, note=note,
                                 jobs=1, pure=False): recording for recording, html, results in jobs_of}
        for future in dask_completed(futures):
            try:
                finished(future.result())
            except Exception as exc:  # a worker lost or killed: this recording fails, the others go on
                finished(Outcome(futures[future], error=f"the Dask task failed: {type(exc).__name__}: {exc}"))
        return outcomes
    cores = os.cpu_count() or 1
    workers = workers or max(1, min(cores, len(jobs_of)))
    jobs = max(1, cores // workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(certify_recording, recording, html, results, address, holder=holder, note=note,
                               jobs=jobs): recording for recording, html, results in jobs_of}
        for future in as_completed(futures):
            finished(future.result())
    return outcomes


def summary(outcomes: list[Outcome], where: str) -> tuple[str, int]:
    """The closing line and the exit status: 0 all accepted, 1 any not accepted (or not
    certified, incomplete), 2 any recording that could not be certified."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        key = "failed" if outcome.error else (outcome.verdict or "unknown")
        counts[key] = counts.get(key, 0) + 1
    order = ["accepted", "not accepted", "not certified", "incomplete", "unknown", "failed"]
    text = ", ".join(f"{counts[key]} {key}" for key in order if key in counts)
    status = 2 if "failed" in counts else (0 if counts.get("accepted", 0) == len(outcomes) and outcomes else 1)
    return f"{len(outcomes)} recording(s): {text}; history: {where}", status

