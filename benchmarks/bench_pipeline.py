"""Time one acceptance run stage by stage, and how it scales with the session's length.

Run by hand::

    python benchmarks/bench_pipeline.py [--microscope sim] [--jobs N]
    python benchmarks/bench_pipeline.py --frames 100 1000 10000 [--frame-px 512]

The first form runs the shipped microscope's protocols, as ``pytest suites/`` does, and
prints acquire / analyse / figures / total and the registrations made. The second
simulates long sessions (a wear study: the Figure 3 hysteresis line along x, cycled
again and again) of the given numbers of frames, each in a fresh process, and prints
for each the analysis time, the time per frame and the peak resident memory of the
whole process (acquisition, recording, analysis).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stage_acceptance.acceptance import AcceptanceRun
from stage_acceptance.analysis import analyse
from stage_acceptance.config import load_holder, load_microscope
from stage_acceptance.microscope import Envelope
from stage_acceptance.protocols import Protocol, hysteresis_line
from stage_acceptance.registry import registration_plan
from stage_acceptance.session import RecordingWriter, read_recording, run_protocols
from stage_acceptance.sim.microscope import SimulatedMicroscope


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def one_run(name: str, jobs: int | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = AcceptanceRun(name, None, None, reports_dir=Path(tmp), jobs=jobs)
        t0 = time.perf_counter()
        session = run.session()
        t1 = time.perf_counter()
        run.evaluate()
        t2 = time.perf_counter()
        figures = run.figures()
        t3 = time.perf_counter()
        plan = registration_plan(session)
        images = sum(f.stat().st_size for f in (Path(session.directory) / "images").iterdir())
        print(f"microscope {name}: {len(session.frames)} frames of {session.frame_shape[0]} px, "
              f"verdict {run.verdict.word}, case {run.certificate.case}")
        print(f"registrations: {len(plan.pairs)} pairs, each once ({len(session.frames) - 1} consecutive)")
        print(f"{'stage':<32}{'seconds':>10}")
        print(f"{'acquire (simulate + write)':<32}{t1 - t0:>10.1f}")
        print(f"{'analyse (register + metrics)':<32}{t2 - t1:>10.1f}")
        print(f"{'figures ({} PNG)'.format(len(figures)):<32}{t3 - t2:>10.1f}")
        print(f"{'total':<32}{t3 - t0:>10.1f}")
        print(f"recording: {images / 2**20:.1f} MiB of images; peak RSS {peak_rss_mb():.0f} MiB")


def long_session(frames: int, frame_px: int, jobs: int | None) -> dict:
    """Simulate and analyse a wear study of `frames` frames; return the figures."""
    base = load_microscope("sim")
    config = dataclasses.replace(base, frame_px=frame_px)
    line = hysteresis_line("x", config.protocol.step_nm, config.protocol.steps)
    visits = (line.visits * (frames // len(line.visits) + 1))[:frames]
    protocol = Protocol("hysteresis-x", f"wear study: the hysteresis line along x cycled, {frames} frames",
                        tuple(visits))
    with tempfile.TemporaryDirectory() as tmp:
        microscope = SimulatedMicroscope(config)
        writer = RecordingWriter(Path(tmp) / "rec", {"microscope": "wear-study", "pixel_size_nm": config.pixel_size_nm,
                                                      "stage_to_image": {"rotation_deg": 0.0, "flip_y": False}})
        t0 = time.perf_counter()
        run_protocols(Envelope(microscope, load_holder("default").limits), [protocol], writer)
        t1 = time.perf_counter()
        session = read_recording(Path(tmp) / "rec")
        analysis = analyse(session, jobs=jobs)
        t2 = time.perf_counter()
        return {"frames": frames, "pairs": len(registration_plan(session).pairs), "acquire_s": t1 - t0,
                "analyse_s": t2 - t1, "ms_per_frame": 1000.0 * (t2 - t1) / frames,
                "backlash_nm": analysis.metrics["x.backlash_nm"].value, "peak_rss_mb": peak_rss_mb()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--microscope", default="sim")
    parser.add_argument("--jobs", type=int, default=None, help="threads registering at once (default: every core)")
    parser.add_argument("--frames", type=int, nargs="*", help="simulate long sessions of these lengths")
    parser.add_argument("--frame-px", type=int, default=512)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.frames:
        one_run(args.microscope, args.jobs)
        return
    if args.child:  # one length, in its own process, so that its peak memory is its own
        print(json.dumps(long_session(args.frames[0], args.frame_px, args.jobs)))
        return
    print(f"{'frames':>8}{'pairs':>8}{'acquire s':>11}{'analyse s':>11}{'ms/frame':>10}{'peak RSS MiB':>14}")
    for frames in args.frames:
        command = [sys.executable, __file__, "--child", "--frames", str(frames), "--frame-px", str(args.frame_px)]
        if args.jobs:
            command += ["--jobs", str(args.jobs)]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        print(f"{result['frames']:>8}{result['pairs']:>8}{result['acquire_s']:>11.1f}{result['analyse_s']:>11.1f}"
              f"{result['ms_per_frame']:>10.1f}{result['peak_rss_mb']:>14.0f}")


if __name__ == "__main__":
    main()
