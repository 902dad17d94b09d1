"""Evidence rules: a certificate never says more than the session supports.

Each test builds a session that once certified "case a, ACCEPTED" on thin or no
evidence, and asserts the verdict it gets now.
"""

import dataclasses
import json

import numpy as np
import pytest

from conftest import CONFIGS, record_sim
from stage_acceptance.analysis import analyse
from stage_acceptance.certification import certify, metric_checks, verdict
from stage_acceptance.config import load_holder, load_microscope
from stage_acceptance.report import stage_to_image_json
from stage_acceptance.session import read_recording

HOLDER = load_holder("default")


def judge(session, selected=True):
    analysis = analyse(session)
    certificate = certify(analysis, HOLDER, selected=selected)
    checks = metric_checks(analysis, HOLDER)
    return analysis, certificate, checks, verdict(certificate, checks, HOLDER)


def rewrite(directory, change_frame=None, change_meta=None):
    """Edit a recording in place: ``change_frame(record)`` per frames.jsonl line, ``change_meta(meta)``."""
    if change_frame is not None:
        lines = [json.loads(line) for line in (directory / "frames.jsonl").read_text().splitlines()]
        for record in lines:
            change_frame(record)
        (directory / "frames.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if change_meta is not None:
        meta = json.loads((directory / "session.json").read_text())
        change_meta(meta)
        (directory / "session.json").write_text(json.dumps(meta))
    return read_recording(directory)


@pytest.fixture(scope="module")
def good_recording(tmp_path_factory):
    """A case-a recording of the certification protocols (hysteresis, cross, dwell)."""
    directory = tmp_path_factory.mktemp("good") / "rec"
    record_sim(load_microscope(CONFIGS / "case-a.toml"), directory)
    return directory


def copy_of(recording, tmp_path):
    import shutil

    shutil.copytree(recording, tmp_path / "rec")
    return tmp_path / "rec"


def test_the_good_recording_is_accepted(good_recording):
    _, certificate, _, result = judge(read_recording(good_recording))
    assert certificate.case == "a" and result.word == "accepted"


def test_a_session_without_a_lateral_move_certifies_nothing(tmp_path):
    session, _ = record_sim(load_microscope(CONFIGS / "case-a.toml"), tmp_path / "rec",
                            protocols=("dwell", "tilt-alpha"))
    analysis, certificate, checks, result = judge(session)
    assert not analysis.steps.translation.any()
    assert certificate.case is None and not certificate.accepted
    assert result.word == "not certified" and result.headline.startswith("NOT CERTIFIED: insufficient evidence")
    assert any("needs >= 4 translation steps; the session has 0" in line for line in certificate.missing)
    assert checks["drift_nm_per_min"].passed is True  # what it can measure, it measures
    assert checks["x.backlash_nm"].passed is None and "reversal" in checks["x.backlash_nm"].reason


def test_dwell_pairs_are_not_translation_steps(tmp_path):
    session, _ = record_sim(load_microscope(CONFIGS / "case-a.toml"), tmp_path / "rec", protocols=("dwell",))
    analysis, certificate, _, result = judge(session)
    assert len(analysis.steps) == 2 and not analysis.steps.translation.any()
    assert analysis.pairs["target_actual"].rms.value is None
    assert result.word == "not certified"


def test_steps_longer_than_the_field_certify_nothing(tmp_path):
    config = load_microscope(CONFIGS / "case-a.toml")
    field_nm = config.frame_px * config.pixel_size_nm  # 1920 nm
    long = dataclasses.replace(config, protocol=dataclasses.replace(config.protocol, step_nm=1.3 * field_nm))
    session, _ = record_sim(long, tmp_path / "rec")
    analysis, certificate, _, result = judge(session)
    assert int(analysis.steps.registered.sum()) <= 4
    assert result.word == "not certified"
    assert any("consecutive frame pairs could be registered" in line for line in certificate.missing)


def test_a_wrong_pixel_size_certifies_nothing(good_recording, tmp_path):
    session = rewrite(copy_of(good_recording, tmp_path),
                      change_meta=lambda meta: meta.update(pixel_size_nm=meta["pixel_size_nm"] / 1000))
    _, certificate, _, result = judge(session)
    assert certificate.case is None and result.word == "not certified"


def test_a_readback_only_recording_is_never_certified(good_recording, tmp_path):
    session = rewrite(copy_of(good_recording, tmp_path), change_frame=lambda record: record.update(target=None))
    analysis, certificate, checks, result = judge(session)
    assert np.isnan(session.targets_nm()).all()
    assert analysis.steps.translation.any()  # the readback says the stage moved ...
    assert certificate.pairs["target_actual"].agree is None  # ... but nothing that needs the target is measured
    assert certificate.pairs["target_reported"].agree is None
    assert checks["x.backlash_nm"].value is None and checks["coupling.x_to_y"].value is None
    assert result.word == "not certified" and certificate.case is None


def test_one_phantom_readback_step_passes_no_test(tmp_path):
    """Readback only, standing still, one 19.5 nm readback jump (as in the real SerialEM frames)."""
    session, _ = record_sim(load_microscope(CONFIGS / "case-a.toml"), tmp_path / "rec",
                            protocols=("dwell",))

    def phantom(record):
        record["target"] = None
        if record["index"] == 2:
            record["reported"]["x"] = record["reported"].get("x", 0.0) + 19.5

    analysis, certificate, checks, result = judge(rewrite(tmp_path / "rec", change_frame=phantom))
    assert analysis.steps.translation.sum() == 1  # the phantom step
    for name in ("coupling.x_to_y", "coupling.y_to_x", "coupling.skew_deg", "x.scale_error",
                 "x.reported_backlash_nm"):
        assert checks[name].passed is None, name
    assert result.word == "not certified"


def test_selection_without_the_certification_test_certifies_no_case(good_recording):
    _, certificate, checks, result = judge(read_recording(good_recording), selected=False)
    assert certificate.case is None and result.word == "not certified"
    assert "not selected" in result.headline
    assert checks["x.backlash_nm"].passed is True  # the metrics are still measured and judged


def test_an_estimated_rotation_says_what_it_hides(tmp_path):
    config = load_microscope(CONFIGS / "case-a.toml")
    session, _ = record_sim(dataclasses.replace(config, stage_to_image=None), tmp_path / "rec")
    analysis, certificate, _, result = judge(session)
    assert analysis.stage_to_image.status == "estimated"
    low, high = analysis.stage_to_image.rotation_ci95
    assert low <= analysis.transform.rotation_deg <= high
    document = stage_to_image_json(analysis)
    assert document["estimated"] is True and "cannot be told from an estimated" in document["note"]
    skew = analysis.metrics["coupling.skew_deg"]
    assert document["skew_bound_deg"] == pytest.approx(max(abs(skew.ci95[0]), abs(skew.ci95[1])))
    assert certificate.case == "a" and result.word == "accepted"


def test_drift_and_tilt_run_without_a_calibration_and_say_what_they_cannot_measure(tmp_path):
    config = load_microscope(CONFIGS / "case-a.toml")
    session, _ = record_sim(dataclasses.replace(config, stage_to_image=None), tmp_path / "rec",
                            protocols=("dwell", "tilt-alpha"))
    analysis, certificate, checks, result = judge(session, selected=False)
    assert analysis.stage_to_image.status == "unknown" and not analysis.transform_known
    assert stage_to_image_json(analysis)["rotation_deg"] is None
    assert checks["drift_nm_per_min"].passed is True
    assert checks["tilt.alpha.shift_nm_per_deg"].value == pytest.approx(1000.0 * np.pi / 180, rel=0.05)
    assert "stage-to-image orientation, which is unknown" in checks["coupling.x_to_y"].reason
    assert result.word == "not certified"
