"""The ``stage-acceptance`` command: ``serve`` a microscope over ZeroMQ, make CURVE ``keys``.

Every failure is one line on stderr and exit status 2; Ctrl-C stops serving cleanly
(status 0) and leaves the stage where it is.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .config import ConfigError, load_holder, load_microscope

DEFAULT_BIND = "tcp://127.0.0.1:5555"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stage-acceptance",
                                     description="Serve a microscope to the acceptance suites over ZeroMQ.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a microscope (sim, remote, ...) over ZeroMQ")
    serve.add_argument("--microscope", required=True, help="microscope config name or path")
    serve.add_argument("--holder", default=None,
                       help="holder name or path whose [limits] the server enforces (default: the config's)")
    serve.add_argument("--bind", default=DEFAULT_BIND, help=f"endpoint to bind (default {DEFAULT_BIND})")
    serve.add_argument("--keys", default=None, metavar="DIR",
                       help="CURVE key folder made by 'stage-acceptance keys'; required for a non-loopback bind")
    serve.add_argument("--delay-s", type=float, default=0.0,
                       help="delay every reply by this many seconds (testing slow links)")
    keys = commands.add_parser("keys", help="create CURVE server and client key pairs in DIR")
    keys.add_argument("directory", metavar="DIR")
    return parser


def _serve(args) -> int:
    from .acceptance import open_microscope
    from .remote.server import serve, served_settings

    config = load_microscope(args.microscope)
    holder = load_holder(args.holder or config.holder)
    microscope = open_microscope(config)
    stop = threading.Event()

    def interrupt(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)

    def ready(endpoint: str) -> None:
        print(f"stage-acceptance: serving {microscope.name} on {endpoint} (holder {holder.key}); Ctrl-C stops",
              flush=True)

    settings = served_settings(holder.key, config.protocol, config.stage_to_image)
    serve(microscope, args.bind, holder.limits, keys_dir=args.keys, delay_s=args.delay_s, stop_event=stop,
          ready=ready, settings=settings)
    print("stage-acceptance: stopped", flush=True)
    return 0


def _keys(args) -> int:
    from .remote.keys import create_keys

    root = create_keys(args.directory)
    print(f"stage-acceptance: CURVE keys in {root}: server.key_secret stays on the microscope PC; "
          f"clients need server.key and client.key_secret", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    from .remote.client import RemoteError
    from .remote.keys import KeysError
    from .remote.server import ServeError

    try:
        return _serve(args) if args.command == "serve" else _keys(args)
    except (ConfigError, ServeError, KeysError, RemoteError, OSError) as exc:
        print(f"stage-acceptance {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
