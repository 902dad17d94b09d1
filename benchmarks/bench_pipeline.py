"""Time one acceptance run of a shipped simulated microscope, stage by stage.

Run by hand:  python benchmarks/bench_pipeline.py [microscope]   (default: sim)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from stage_acceptance.acceptance import AcceptanceRun


def main(name: str = "sim") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = AcceptanceRun(name, None, None, reports_dir=Path(tmp))
        t0 = time.perf_counter()
        session = run.session()
        t1 = time.perf_counter()
        run.evaluate()
        t2 = time.perf_counter()
        figures = run.figures()
        t3 = time.perf_counter()
        frames = len(session.frames)
        print(f"microscope {name}: {frames} frames of {session.image(0).shape[0]} px, case {run.certificate.case}")
        print(f"{'stage':<28}{'seconds':>10}")
        print(f"{'acquire (simulate + write)':<28}{t1 - t0:>10.1f}")
        print(f"{'analyse (register + metrics)':<28}{t2 - t1:>10.1f}")
        print(f"{'figures ({} PNG)'.format(len(figures)):<28}{t3 - t2:>10.1f}")
        print(f"{'total':<28}{t3 - t0:>10.1f}")
        print(f"instrument time of the session: {run.instrument_time_s() / 60:.1f} min")


if __name__ == "__main__":
    main(*sys.argv[1:2])
