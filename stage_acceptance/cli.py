"""The ``stage-acceptance`` command: ``serve`` a microscope over ZeroMQ, make CURVE ``keys``,
``import serialem`` sessions as recordings, list or plot the ``history`` of certifications, ``analyse``
many recordings.

Every failure is one line on stderr and exit status 2; Ctrl-C stops serving cleanly
(status 0) and leaves the stage where it is, and stops an import without leaving
anything behind (status 1).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

from .config import ConfigError, load_holder, load_microscope

DEFAULT_BIND = "tcp://127.0.0.1:5555"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stage-acceptance",
                                     description="Serve a microscope to the acceptance suites over ZeroMQ; list "
                                                 "and plot the history of certifications; analyse many recordings.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a microscope (sim, pyjem, serialem) or a recording over ZeroMQ")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--microscope", help="microscope config name or path (kind sim, pyjem or serialem)")
    source.add_argument("--replay", metavar="DIR",
                        help="serve a recording-v1 folder: clients get its frames back, in the recorded order")
    serve.add_argument("--holder", default=None,
                       help="holder name or path whose [limits] the server enforces (default: the config's, or "
                            "for --replay the recording's if it is a shipped holder, else 'default')")
    serve.add_argument("--bind", default=DEFAULT_BIND, help=f"endpoint to bind (default {DEFAULT_BIND})")
    serve.add_argument("--keys", default=None, metavar="DIR",
                       help="CURVE key folder made by 'stage-acceptance keys'; required for a non-loopback bind")
    serve.add_argument("--delay-s", type=float, default=0.0,
                       help="delay every reply by this many seconds (testing slow links)")
    serve.add_argument("--max-wait-s", type=float, default=None, metavar="S",
                       help="longest 'wait' a client may ask for, in seconds (default 3600); told to clients")
    serve.add_argument("--verbose", action="store_true",
                       help="log every call (moves with their targets); by default only clients starting and "
                            "ending, stops and errors")
    keys = commands.add_parser("keys", help="create CURVE server and client key pairs in DIR")
    keys.add_argument("directory", metavar="DIR")
    imports = commands.add_parser("import", help="write another tool's session as a recording-v1 folder")
    tools = imports.add_subparsers(dest="tool", required=True)
    serialem = tools.add_parser("serialem", help="SerialEM MRC stacks with their .mdoc files")
    serialem.add_argument("files", nargs="+", metavar="FILE",
                          help="a SerialEM .mrc stack or its .mdoc (either names the pair); frames of all files are "
                               "put in acquisition order (DateTime)")
    serialem.add_argument("--out", required=True, metavar="DIR",
                          help="the recording-v1 folder to create (must not exist, or be empty)")
    serialem.add_argument("--microscope", default=None, metavar="NAME",
                          help="instrument name (default: the one in SerialEM's title line)")
    serialem.add_argument("--image-shift-matrix", nargs=4, type=float, default=None, metavar=("XX", "XY", "YX", "YY"),
                          help="calibration of SerialEM's image-shift units: the stage move in nm (x, y) that moves "
                               "the image as one unit of image shift x (XX, YX) and y (XY, YY) does; without it the "
                               "image shift is kept in its units and pairs across a change of it are not measured")
    serialem.add_argument("--stage-to-image", type=float, default=None, metavar="DEG",
                          help="the stage-to-image rotation from a calibration (degrees, within -+360), written as "
                               "the recording's stage_to_image; without it the analysis estimates it from the moves")
    serialem.add_argument("--flip-y", action="store_true",
                          help="with --stage-to-image: the image y axis is flipped against the stage's")
    history = commands.add_parser("history", help="list the recorded certifications, or write their trends page")
    history.add_argument("--history", default=None, metavar="URL|PATH",
                         help="the history database (default: reports/history.sqlite)")
    history.add_argument("--microscope", default=None, metavar="NAME", help="only this instrument")
    history.add_argument("--holder", default=None, metavar="NAME", help="only this holder")
    history.add_argument("--html", default=None, metavar="PATH",
                         help="write a self-contained page with one plot per metric over time")
    analyse = commands.add_parser("analyse", help="certify many recordings, each with its report and history entry")
    analyse.add_argument("paths", nargs="+", metavar="DIR",
                         help="a recording folder, or a folder searched for recordings (folders with session.json)")
    analyse.add_argument("--reports", default="reports", metavar="DIR",
                         help="where the reports and results JSONs go (default: reports)")
    analyse.add_argument("--history", default=None, metavar="URL|PATH",
                         help="the history database (default: history.sqlite in the reports folder)")
    analyse.add_argument("--holder", default=None, metavar="NAME|PATH",
                         help="judge every recording with this holder (default: each recording's, as --replay does)")
    analyse.add_argument("--note", default=None, metavar="TEXT", help="a note recorded with every run")
    analyse.add_argument("--workers", default=None, type=int, metavar="N",
                         help="recordings certified at once on this machine (default: every core)")
    analyse.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                         help="certify on the workers of this Dask scheduler instead of this machine")
    return parser


def _analyse(args) -> int:
    from .acceptance import utc_stamp
    from .fleet import analyse_recordings, summary
    from .history import HistoryError, describe_url, history_url

    where = "on " + args.scheduler if args.scheduler else "on this machine"
    print(f"stage-acceptance analyse: certifying the recordings in {', '.join(args.paths)} {where}", flush=True)

    def progress(done: int, total: int, outcome) -> None:
        print(f"[{done}/{total}] {outcome.line()}", flush=True)

    outcomes = analyse_recordings(args.paths, reports_dir=args.reports, history=args.history, holder=args.holder,
                                  note=args.note, workers=args.workers, scheduler=args.scheduler, stamp=utc_stamp(),
                                  progress=progress)
    try:
        database = describe_url(history_url(args.history, Path(args.reports)))
    except HistoryError as exc:
        raise ConfigError(str(exc)) from None
    line, status = summary(outcomes, database)
    print(f"stage-acceptance analyse: {line}", flush=True)
    return status


def _name(value: str | None, option: str) -> str | None:
    if value is not None and (not value or len(value) > 1000 or not value.isprintable()):
        raise ConfigError(f"{option} {value[:60]!r}: must be a name of 1 to 1000 printable characters")
    return value


def _history(args) -> int:
    from .history import History, HistoryError, describe_url, history_url
    from .trends import history_page, runs_text

    microscope, holder = _name(args.microscope, "--microscope"), _name(args.holder, "--holder")
    try:
        url = history_url(args.history, Path("reports"))
    except HistoryError as exc:
        raise ConfigError(str(exc)) from None
    if url.get_backend_name() == "sqlite" and not Path(url.database).is_file():
        raise ConfigError(f"history {url.database}: no such file (every run of the suites writes one: "
                          f"pytest suites/; or give --history URL|PATH)")
    with History(url) as store:
        entries = store.runs(microscope, holder)
    selection = " and ".join(part for part in (microscope and f"microscope {microscope}",
                                               holder and f"holder {holder}") if part)
    if args.html:
        page = Path(args.html)
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(history_page(entries, where=describe_url(url), selection=selection), encoding="utf-8")
        print(f"stage-acceptance: {len(entries)} run(s) of {describe_url(url)} plotted in {page}", flush=True)
        return 0
    if not entries:
        print(f"stage-acceptance: no runs recorded in {describe_url(url)}" + (f" for {selection}" if selection else ""))
        return 0
    print(runs_text(entries), flush=True)
    return 0


def _serve(args) -> int:
    from .remote.protocol import MAX_WAIT_S
    from .remote.server import ServeError, serve, served_settings

    if not args.delay_s >= 0 or args.delay_s == float("inf"):
        raise ServeError(f"--delay-s must be a finite number >= 0, got {args.delay_s}")
    if args.max_wait_s is not None and not 0 < args.max_wait_s < float("inf"):
        raise ServeError(f"--max-wait-s must be a finite number > 0, got {args.max_wait_s}")

    if args.replay:
        from .acceptance import recorded_protocol, recording_holder
        from .backends.replay import ReplayMicroscope
        from .session import RecordingError, read_recording

        session = read_recording(args.replay)
        holder = recording_holder(session, args.holder)
        settings = served_settings(holder.key, recorded_protocol(session), session.stage_to_image)
        try:
            microscope = ReplayMicroscope(session)
        except ValueError as exc:  # e.g. a readback-only recording (a SerialEM import): nothing to answer
            raise RecordingError(str(exc)) from None
    else:
        from .acceptance import open_microscope

        config = load_microscope(args.microscope)
        if config.kind == "remote":
            raise ConfigError(f"{config.path or args.microscope}: kind = \"remote\" is a client config; serve the "
                              f"microscope itself (kind sim, pyjem or serialem) on the PC it is attached to")
        holder = load_holder(args.holder or config.holder)
        settings = served_settings(holder.key, config.protocol, config.stage_to_image)
        microscope = open_microscope(config)
    stop = threading.Event()

    def interrupt(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)

    def ready(endpoint: str) -> None:
        what = f"{microscope.name} (replay of {args.replay})" if args.replay else microscope.name
        print(f"stage-acceptance: serving {what} on {endpoint} (holder {holder.key}); Ctrl-C stops", flush=True)

    log_lock = threading.Lock()

    def log(line: str) -> None:  # one write per whole line, so lines from two threads never mix
        text = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S}Z {line}\n"
        with log_lock:
            sys.stdout.write(text)
            sys.stdout.flush()

    serve(microscope, args.bind, holder.limits, keys_dir=args.keys, delay_s=args.delay_s,
          max_wait_s=MAX_WAIT_S if args.max_wait_s is None else args.max_wait_s, stop_event=stop,
          ready=ready, settings=settings, log=log, verbose=args.verbose)
    print("stage-acceptance: stopped", flush=True)
    return 0


def _keys(args) -> int:
    from .remote.keys import create_keys

    root = create_keys(args.directory)
    print(f"stage-acceptance: CURVE keys in {root}: server.key_secret stays on the microscope PC; "
          f"clients need server.key and client.key_secret", flush=True)
    return 0


def _import(args) -> int:
    from .importers.serialem import plan_import, write_import

    plan = plan_import(args.files, args.out, microscope=args.microscope, image_shift_to_nm=args.image_shift_matrix,
                       stage_to_image=(None if args.stage_to_image is None and not args.flip_y
                                       else (args.stage_to_image, args.flip_y)))
    try:
        session = write_import(plan, args.out)
    except KeyboardInterrupt:
        print(f"stage-acceptance import: interrupted (Ctrl-C); nothing was written to {args.out}",
              file=sys.stderr, flush=True)
        return 1
    shift = ("calibrated to nm" if plan.image_shift_to_nm is not None else "in SerialEM units (pairs across a "
             "change of it will not be measured; see --image-shift-matrix)")
    has_shift = any(section.image_shift is not None for _, section in plan.frames)
    montage = ("" if plan.montage is None else
               f"; a montage of {len(plan.montage.places)} pieces on a {plan.montage.grid[0]} x {plan.montage.grid[1]} "
               f"grid")
    if plan.stage_to_image is not None:
        montage += (f"; stage-to-image rotation {plan.stage_to_image[0]:g} deg"
                    f"{', flipped' if plan.stage_to_image[1] else ''} as given")
    print(f"stage-acceptance: imported {len(session.frames)} frames of {session.microscope} from "
          f"{len(plan.stacks)} file(s) into {args.out} (pixel {session.pixel_size_nm:g} nm; readback only, target "
          f"null; image shift {shift if has_shift else 'not recorded'}{montage}); analyse with: pytest suites/ "
          f"--replay={args.out}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    from .remote.client import RemoteError
    from .remote.keys import KeysError
    from .microscope import BackendError
    from .remote.server import ServeError
    from .history import HistoryError
    from .session import RecordingError

    errors = (ConfigError, RecordingError, ServeError, KeysError, RemoteError, BackendError, HistoryError,
              OSError)
    if args.command == "import":  # its readers (mrcfile, mdocfile) load only when needed
        from .importers.serialem import SerialEMImportError

        errors += (SerialEMImportError,)
    commands = {"serve": _serve, "keys": _keys, "import": _import, "history": _history, "analyse": _analyse}
    try:
        return commands[args.command](args)
    except errors as exc:
        print(f"stage-acceptance {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
