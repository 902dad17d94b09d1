"""The montage: its protocol, its keys, the least-squares solver, and a simulated montage with
known piece errors, live and as a readback-only (SerialEM-like) recording."""

import json
import shutil

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings, strategies as st

from conftest import CONFIGS, record_sim
from stage_acceptance.analysis import MONTAGE_METRICS, analyse
from stage_acceptance.certification import certify, metric_checks
from stage_acceptance.config import ConfigError, ProtocolConfig, load_holder, load_microscope
from stage_acceptance.figures import all_figures, figure_caption
from stage_acceptance.geometry import StageToImage
from stage_acceptance.microscope import Envelope, MoveRefused
from stage_acceptance.montage import (expected_field_px, montage_motion, neighbour_errors_nm, overlap_pairs,
                                      overlap_width_px, pair_displacements_nm, piece_errors_nm, solve_positions)
from stage_acceptance.registration import Registration, unregistered
from stage_acceptance.protocols import build, montage, serpentine
from stage_acceptance.registry import revisit_groups
from stage_acceptance.report import montage_json, results_json
from stage_acceptance.session import RecordingError, RecordingWriter, read_recording, run_protocols
from stage_acceptance.sim.microscope import SimulatedMicroscope

# --------------------------------------------------------------------------- the protocol


def test_serpentine_order_goes_back_and_forth_row_by_row():
    assert serpentine(3, 2) == [(0, 0), (1, 0), (2, 0), (2, 1), (1, 1), (0, 1)]
    assert serpentine(1, 3) == [(0, 0), (0, 1), (0, 2)]
    order = serpentine(4, 5)
    assert sorted(order) == [(c, r) for c in range(4) for r in range(5)]
    # every piece is a raster neighbour of the one before: no long jumps
    assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in zip(order, order[1:]))


def test_montage_steps_are_the_field_less_the_overlap_and_centred_on_the_origin():
    protocol = montage(3, 2, 0.25, field_nm=2000.0)
    assert protocol.name == "montage" and len(protocol.visits) == 6
    assert [v.piece for v in protocol.visits] == serpentine(3, 2)
    offsets = np.array([[v.offset.x_nm, v.offset.y_nm] for v in protocol.visits])
    assert np.allclose(offsets.mean(axis=0), 0.0)
    assert np.allclose(np.hypot(*np.diff(offsets, axis=0).T), 1500.0)  # 2000 nm x (1 - 0.25)
    # without a calibration the grid runs along the stage axes; a column further right in
    # the montage image is reached by moving the stage towards -x (the stage carries the specimen)
    assert offsets[1, 0] - offsets[0, 0] == -1500.0 and offsets[1, 1] == offsets[0, 1]


@pytest.mark.parametrize("rotation_deg, flip_y", [(0.0, False), (30.0, True), (-100.0, False)])
def test_a_calibrated_grid_follows_the_image_axes(rotation_deg, flip_y):
    transform = StageToImage(rotation_deg, flip_y)
    protocol = montage(3, 3, 0.2, field_nm=1000.0, stage_to_image=transform)
    offsets = np.array([[v.offset.x_nm, v.offset.y_nm] for v in protocol.visits])
    field = expected_field_px(offsets, 1.0, transform)  # nm in the montage image at 1 nm per pixel
    pieces = np.array([v.piece for v in protocol.visits])
    # each field sits exactly where its (column, row) says, 800 nm apart along the image axes
    assert np.allclose(field, (pieces - pieces[0]) * 800.0)


def test_the_montage_needs_the_field_of_view():
    with pytest.raises(ValueError, match="montage protocol needs the field of view"):
        build(ProtocolConfig(), ["montage"])
    with pytest.raises(ValueError, match="at least 2 pieces"):
        montage(1, 1, 0.2, 1000.0)


def test_a_montage_beyond_the_holder_limits_is_refused_before_anything_moves(tmp_path):
    config = load_microscope(CONFIGS / "montage.toml")
    scope = SimulatedMicroscope(config)
    plan = build(ProtocolConfig(montage_pieces=(50, 50), montage_overlap=0.1), ["montage"],
                 field_nm=2.0e5)  # 50 x 50 fields of 200 um: far beyond +-1 mm
    writer = RecordingWriter(tmp_path / "rec", {"microscope": "m", "pixel_size_nm": 1.0})
    with pytest.raises(MoveRefused, match="outside the holder limit x_nm"):
        run_protocols(Envelope(scope, load_holder("default").limits), plan, writer)
    assert scope.truth == [] and writer.frames == []


# --------------------------------------------------------------------------- keys


MINIMAL = 'name = "t"\nkind = "sim"\npixel_size_nm = 5.0\nframe_px = 128\n[protocol]\n'


@pytest.mark.parametrize("line, message", [
    ("montage_pieces = [1, 1]", "key 'protocol.montage_pieces' has bad value [1, 1]: must be [columns, rows]: "
                                "two integers 1 to 50, at least 2 pieces in all"),
    ("montage_pieces = [3]", "key 'protocol.montage_pieces' has bad value [3]"),
    ("montage_pieces = [3, 0]", "key 'protocol.montage_pieces.1' has bad value 0: must be an integer in [1, 50]"),
    ("montage_pieces = [3, 2.0]", "key 'protocol.montage_pieces.1' has bad value 2.0: must be an integer in [1, 50]"),
    ("montage_pieces = [51, 2]", "key 'protocol.montage_pieces.0' has bad value 51"),
    ("montage_pieces = \"3x3\"", "key 'protocol.montage_pieces' has bad value '3x3'"),
    ("montage_overlap = 0.05", "key 'protocol.montage_overlap' has bad value 0.05: must be a number in [0.1, 0.9]"),
    ("montage_overlap = 0.95", "key 'protocol.montage_overlap' has bad value 0.95"),
    ("montage_overlap = nan", "key 'protocol.montage_overlap' has bad value nan: must be a finite number"),
    ("montage_piece = [2, 2]", "unknown key 'protocol.montage_piece' (did you mean 'protocol.montage_pieces'?)"),
])
def test_bad_montage_keys_get_one_line_naming_file_key_and_value(tmp_path, line, message):
    path = tmp_path / "m.toml"
    path.write_text(MINIMAL + line + "\n")
    with pytest.raises(ConfigError) as error:
        load_microscope(path)
    text = str(error.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_montage_keys_are_read_with_their_defaults(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(MINIMAL + "montage_pieces = [4, 2]\n")
    protocol = load_microscope(path).protocol
    assert protocol.montage_pieces == (4, 2) and protocol.montage_overlap == 0.2
    assert ProtocolConfig(montage_pieces=[2, 5]).montage_pieces == (2, 5)  # a list from JSON


# --------------------------------------------------------------------------- the solver


def grid_pairs(columns, rows):
    column, row = np.array([(c, r) for r in range(rows) for c in range(columns)]).T
    return column, row, overlap_pairs(column, row, np.full((len(column), 2), np.nan), (64, 64))


@settings(max_examples=40, deadline=None)
@given(columns=st.integers(1, 5), rows=st.integers(2, 5), seed=st.integers(0, 2**32 - 1))
def test_least_squares_recovers_random_piece_offsets_from_noisy_pairs(columns, rows, seed):
    rng = np.random.default_rng(seed)
    column, row, pairs = grid_pairs(columns, rows)
    n = len(column)
    truth = rng.normal(0.0, 50.0, (n, 2))
    truth[0] = (7.0, -3.0)
    sigma = rng.uniform(0.2, 2.0, len(pairs))
    measured = truth[pairs[:, 1]] - truth[pairs[:, 0]] + rng.normal(0.0, 1.0, (len(pairs), 2)) * sigma[:, None]
    weights = 1.0 / sigma ** 2
    solution = solve_positions(n, pairs, measured, weights, fixed_position_nm=truth[0])
    assert solution.placed.all() and solution.used.all()
    # the weighted least-squares solution, computed densely
    design = np.zeros((len(pairs), n))
    design[np.arange(len(pairs)), pairs[:, 1]] = 1.0
    design[np.arange(len(pairs)), pairs[:, 0]] = -1.0
    root = np.sqrt(weights)[:, None]
    rhs = measured - design[:, :1] * truth[0]
    expected = np.linalg.lstsq(design[:, 1:] * root, rhs * root, rcond=None)[0]
    assert np.allclose(solution.positions_nm[1:], expected, atol=1e-6)
    assert np.allclose(solution.positions_nm[0], truth[0])
    # ... which recovers the offsets within the noise, and exactly without it
    exact = solve_positions(n, pairs, truth[pairs[:, 1]] - truth[pairs[:, 0]], weights, fixed_position_nm=truth[0])
    assert np.allclose(exact.positions_nm, truth, atol=1e-6)
    error = solution.positions_nm - truth
    assert np.sqrt(np.mean(error ** 2)) < 4.0 * sigma.max()


def test_a_wrong_match_in_a_loop_is_dropped_and_the_rest_solved():
    column, row, pairs = grid_pairs(3, 3)
    truth = np.random.default_rng(3).normal(0.0, 30.0, (9, 2))
    truth[0] = 0.0
    measured = truth[pairs[:, 1]] - truth[pairs[:, 0]]
    measured[4] += (300.0, -200.0)  # one pair matched the wrong feature
    solution = solve_positions(9, pairs, measured, np.ones(len(pairs)), max_residual_nm=10.0)
    assert list(solution.dropped) == [4] and "a wrong match" in solution.dropped[4]
    assert not solution.used[4] and solution.used.sum() == len(pairs) - 1
    assert np.allclose(solution.positions_nm, truth, atol=1e-6)


def test_a_disconnected_graph_places_only_the_pieces_tied_to_the_first():
    column, row, pairs = grid_pairs(3, 2)  # pieces 0 1 2 / 3 4 5
    truth = np.arange(12, dtype=float).reshape(6, 2)
    truth[0] = 0.0
    measured = truth[pairs[:, 1]] - truth[pairs[:, 0]]
    cut = np.array([2 in pair or 5 in pair for pair in pairs])  # the last column: nothing registered
    measured[cut] = np.nan
    solution = solve_positions(6, pairs, measured, np.ones(len(pairs)))
    assert solution.placed.tolist() == [True, True, False, True, True, False]
    assert np.all(np.isnan(solution.positions_nm[[2, 5]]))
    assert np.allclose(solution.positions_nm[solution.placed], truth[solution.placed])


def test_solver_inputs_are_checked():
    with pytest.raises(ValueError, match="one entry per pair"):
        solve_positions(3, [(0, 1)], [(1.0, 2.0), (3.0, 4.0)], [1.0])
    with pytest.raises(ValueError, match="two different pieces"):
        solve_positions(3, [(1, 1)], [(1.0, 2.0)], [1.0])


def test_overlap_pairs_are_the_raster_neighbours_and_pairs_sharing_enough_field():
    column, row = np.array([(c, r) for r in range(2) for c in range(2)]).T
    narrow = np.array([[0, 0], [48, 0], [0, 48], [48, 48]], dtype=float)  # 25 % overlap of 64 px fields
    assert overlap_pairs(column, row, narrow, (64, 64)).tolist() == [[0, 1], [0, 2], [1, 3], [2, 3]]
    wide = narrow / 2.0  # 62.5 % overlap: the diagonals share 14 % of the field
    assert overlap_pairs(column, row, wide, (64, 64)).tolist() == [[0, 1], [0, 2], [1, 2], [0, 3], [1, 3], [2, 3]]
    assert overlap_width_px(column, row, narrow, (64, 64)) == 16.0


def test_errors_count_from_the_first_piece_and_neighbours_compare_errors():
    positions = np.array([[10.0, 0.0], [110.0, 2.0], [215.0, 0.0]])
    targets = np.array([[0.0, 0.0], [100.0, 0.0], [200.0, 0.0]])
    assert piece_errors_nm(positions, targets).tolist() == [[0.0, 0.0], [0.0, 2.0], [5.0, 0.0]]
    pairs, size = neighbour_errors_nm([0, 1, 2], [0, 0, 0], piece_errors_nm(positions, targets))
    assert pairs.tolist() == [[0, 1], [1, 2]] and np.allclose(size, [2.0, np.hypot(5.0, 2.0)])


def test_pair_displacements_are_the_image_motion_less_the_image_shift_change():
    registered = Registration(np.array([-10.0, 4.0]), 0.8, 0.7, True, "")
    failed = unregistered("no peak")
    transform = StageToImage(0.0, False)
    moved = pair_displacements_nm([registered, registered, failed], 2.0, transform)
    assert moved[0].tolist() == [-20.0, 8.0] and np.all(np.isnan(moved[2]))  # (-10, +4) px at 2 nm/px
    less = pair_displacements_nm([registered, registered, failed], 2.0, transform,
                                 [[-15.0, 8.0], [np.nan, np.nan], [1.0, 1.0]])
    assert less[0].tolist() == [-5.0, 0.0]  # most of the image motion was the image shift
    assert np.all(np.isnan(less[1])) and np.all(np.isnan(less[2]))  # change unknown; not registered
    with pytest.raises(ValueError, match="one image-shift change per registration"):
        pair_displacements_nm([registered], 2.0, transform, [[1.0, 1.0], [2.0, 2.0]])


def test_what_moved_the_pieces_apart():
    grid = np.array([[0.0, 0.0], [800.0, 0.0], [800.0, 800.0]])
    still = np.array([[0.0, 0.0], [19.5, 0.0], [0.0, -19.5]])  # a readback that jitters by a quantum
    none = np.zeros((3, 2))
    assert montage_motion(grid, none, 1000.0) == "stage"
    assert montage_motion(still, grid, 1000.0) == "image shift"
    assert montage_motion(still, [[0, 0], [np.nan, np.nan], [np.nan, np.nan]], 1000.0) == "image shift"  # unknown size
    assert montage_motion(grid, grid / 2.0, 1000.0) == "stage and image shift"
    assert montage_motion(still, none, 1000.0) == "neither"
    with pytest.raises(ValueError, match="one row per piece"):
        montage_motion(grid, none[:2], 1000.0)


def test_the_overlap_width_leaves_out_neighbours_of_unknown_offset():
    column, row = np.array([(c, r) for r in range(2) for c in range(2)]).T
    field = np.array([[0, 0], [48, 0], [0, 48], [48, 48]], dtype=float)
    field[3] = np.nan
    assert overlap_width_px(column, row, field, (64, 64)) == 16.0
    field[1:] = np.nan
    assert overlap_width_px(column, row, field, (64, 64)) is None


# --------------------------------------------------------------------------- a simulated montage


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A 3 x 3 montage of 128 px frames on a stage with backlash, scale error and noise."""
    config = load_microscope(CONFIGS / "montage.toml")
    session, scope = record_sim(config, tmp_path_factory.mktemp("montage") / "rec", protocols=["montage"])
    return session, scope, analyse(session)


def true_errors(scope, frames, reference):
    actual = np.array([record.actual.xy_nm() for record in scope.truth])[frames]
    return (actual - actual[0]) - (reference - reference[0])


def test_the_recording_says_which_piece_each_frame_is(live):
    session, _, _ = live
    again = read_recording(session.directory)
    assert [f.extra["montage_piece"] for f in again.frames] == [{"column": c, "row": r} for c, r in serpentine(3, 3)]
    line = json.loads((session.directory / "frames.jsonl").read_text().splitlines()[4])
    assert line["protocol"] == "montage" and line["montage_piece"] == {"column": 1, "row": 1}


def test_known_piece_errors_are_recovered_within_1_nm_rms(live):
    session, scope, analysis = live
    result = analysis.montage
    assert result is not None and result.placed.all() and result.solution.used.all()
    assert len(result.pairs) == 12  # every raster neighbour of a 3 x 3 grid; the diagonals share 9 %
    expected = true_errors(scope, result.frames, result.target_nm)
    assert np.sqrt(np.mean(np.sum(expected[1:] ** 2, axis=1))) > 20.0  # the stage errs well beyond 1 nm
    miss = result.error_nm - expected
    assert np.sqrt(np.mean(np.sum(miss ** 2, axis=1))) < 1.0
    miss = result.reported_error_nm - true_errors(scope, result.frames, result.reported_nm)
    assert np.sqrt(np.mean(np.sum(miss ** 2, axis=1))) < 1.0
    true_rms = np.sqrt(np.mean(np.sum(expected[1:] ** 2, axis=1)))
    rms = analysis.metrics["montage.error_rms_nm"]
    assert abs(rms.value - true_rms) < 1.0 and rms.ci95[0] <= rms.value <= rms.ci95[1]
    assert rms.evidence == {"pieces": 8}


def test_montage_checks_judge_the_neighbours_against_the_overlap(live):
    _, _, analysis = live
    checks = metric_checks(analysis, load_holder("default"))
    assert {f"montage.{name}" for name in MONTAGE_METRICS} <= set(checks)
    neighbours = checks["montage.neighbour_error_max_nm"]
    assert neighbours.limit == pytest.approx(0.3 * 128 * 7.32, abs=0.05) and neighbours.passed
    assert 20.0 < neighbours.value < neighbours.limit
    assert checks["montage.unplaced_pieces"].value == 0 and checks["montage.unplaced_pieces"].passed
    assert checks["montage.error_rms_nm"].limit is None and checks["montage.error_rms_nm"].passed is None
    growth = analysis.metrics["montage.growth_nm_per_piece"]
    assert growth.measured and growth.ci95[0] <= growth.value <= growth.ci95[1]


def test_a_montage_alone_certifies_no_case(live):
    _, _, analysis = live
    # montage moves are as long as the field less the overlap, not the protocol's step: they
    # are measured by the montage analysis, never as steps along an axis
    assert not analysis.steps.translation.any() and set(analysis.steps.kind) == {"other"}
    certificate = certify(analysis, load_holder("default"))
    assert certificate.case is None and certificate.missing


def test_results_json_and_figure_of_the_montage(live):
    session, _, analysis = live
    document = montage_json(analysis)
    assert document["grid"] == [3, 3] and document["placed"] == 9 and document["against"] == "target"
    assert [p["frame"] for p in document["pieces"]] == list(range(9))
    assert document["unplaced"] == [] and len(document["pairs"]) == 12
    assert all(p["used"] and p["reason"] is None for p in document["pairs"])
    assert set(document["rms_by_row_nm"]) == {"0", "1", "2"}
    certificate = certify(analysis, load_holder("default"))
    checks = metric_checks(analysis, load_holder("default"))
    from stage_acceptance.certification import verdict
    full = results_json(analysis, certificate, checks, verdict(certificate, checks, load_holder("default")),
                        microscope="montage", holder="default", source="live", session_path="x", tests={})
    json.dumps(full, allow_nan=False)
    assert full["montage"]["pieces"][4]["error_nm"] == pytest.approx(analysis.montage.error_nm[4].tolist())
    pngs = all_figures(analysis)
    assert "montage" in pngs and len(pngs["montage"]) < 80_000
    assert figure_caption("montage")[0] == "Montage: commanded and actual pieces"


def readback_only(session, directory):
    """The session as a readback-only tool records it: target null (SerialEM's .mdoc)."""
    shutil.copytree(session.directory, directory)
    lines = [json.loads(line) for line in (directory / "frames.jsonl").read_text().splitlines()]
    for line in lines:
        line["target"] = None
        line.pop("protocol", None)
    (directory / "frames.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return read_recording(directory)


def test_a_readback_only_montage_is_solved_against_its_readback_and_certifies_nothing(live, tmp_path):
    session, scope, _ = live
    analysis = analyse(readback_only(session, tmp_path / "serialem"))
    result = analysis.montage
    assert result.placed.all() and not result.has_target
    # the readback is a 19.5 nm grid: the true errors against it, recovered within 1 nm RMS
    assert np.all(np.isclose(result.reported_nm / 19.5, np.round(result.reported_nm / 19.5)))
    miss = result.reported_error_nm - true_errors(scope, result.frames, result.reported_nm)
    assert np.sqrt(np.mean(np.sum(miss ** 2, axis=1))) < 1.0
    assert analysis.metrics["montage.reported_error_rms_nm"].measured
    assert "target null" in analysis.metrics["montage.error_rms_nm"].reason
    assert analysis.metrics["montage.neighbour_error_max_nm"].measured  # against the readback
    assert certify(analysis, load_holder("default")).case is None
    assert montage_json(analysis)["against"] == "readback"


def test_a_piece_that_registers_with_nothing_is_reported_unplaced(live, tmp_path):
    session, _, _ = live
    broken = tmp_path / "broken"
    shutil.copytree(session.directory, broken)
    noise = np.random.default_rng(0).poisson(400.0, (128, 128)).astype(np.uint16)
    tifffile.imwrite(broken / session.frames[2].image, noise)  # piece (2, 0): a corner, two neighbours
    analysis = analyse(read_recording(broken))
    result = analysis.montage
    assert result.unplaced() == [(2, 2, 0)]
    reasons = result.pair_reasons()
    assert sum(reason.startswith("not registered") for reason in reasons) == 2
    checks = metric_checks(analysis, load_holder("default"))
    unplaced = checks["montage.unplaced_pieces"]
    assert unplaced.value == 1 and unplaced.passed is False
    assert unplaced.describe() == "Montage pieces not placed = 1 piece, tolerance |.| <= 0 pieces: FAIL"
    assert montage_json(analysis)["unplaced"] == [{"frame": 2, "column": 2, "row": 0}]
    assert "montage" in all_figures(analysis)


def test_one_montage_per_session(live, tmp_path):
    session, _, _ = live
    twice = tmp_path / "twice"
    shutil.copytree(session.directory, twice)
    lines = (twice / "frames.jsonl").read_text().splitlines()
    assert '"column": 0, "row": 2' in lines[6]
    lines[6] = lines[6].replace('"column": 0, "row": 2', '"column": 0, "row": 0')
    (twice / "frames.jsonl").write_text("\n".join(lines) + "\n")
    analysis = analyse(read_recording(twice))
    assert analysis.montage is None
    reason = analysis.metrics["montage.error_rms_nm"].reason
    assert reason.startswith("frames 0 and 6 are both montage piece (column 0, row 0)")
    assert montage_json(analysis) == {"problem": reason}


@pytest.mark.parametrize("piece, message", [
    ('{"column": -1, "row": 0}', "key 'montage_piece.column' has bad value -1: must be an integer in [0, 9999]"),
    ('{"column": 1.5, "row": 0}', "key 'montage_piece.column' has bad value 1.5"),
    ('{"column": 1}', "missing required key 'montage_piece.row'"),
    ('{"column": 1, "row": 0, "z": 3}', "unknown key 'montage_piece.z'"),
    ('[1, 0]', "key 'montage_piece' has bad value [1, 0]"),
])
def test_a_bad_montage_piece_in_a_recording_is_one_line_naming_file_line_and_key(live, tmp_path, piece, message):
    session, _, _ = live
    bad = tmp_path / "bad"
    shutil.copytree(session.directory, bad)
    lines = (bad / "frames.jsonl").read_text().splitlines()
    record = json.loads(lines[3])
    lines[3] = json.dumps({**record, "montage_piece": json.loads(piece)})
    (bad / "frames.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordingError) as error:
        read_recording(bad)
    assert str(error.value).startswith(f"{bad / 'frames.jsonl'}:4: ") and message in str(error.value)


def test_montage_pieces_are_no_revisits_of_the_other_protocols(tmp_path):
    # the centre piece of a 3 x 3 montage is the origin, reached by a step towards +x, as
    # the cross reaches it on its way back from -x: still no repeatability visit
    session, _ = record_sim(load_microscope(CONFIGS / "montage.toml"), tmp_path / "rec", protocols=["cross", "montage"])
    pieces = {i for i, frame in enumerate(session.frames) if "montage_piece" in frame.extra}
    centre = next(i for i in pieces if session.frames[i].extra["montage_piece"] == {"column": 1, "row": 1})
    assert session.frames[centre].target == session.frames[0].target
    groups = [frame for axis in (0, 1) for group in revisit_groups(session, axis) for frame in group]
    assert not pieces & set(groups)


def test_a_session_without_a_montage_says_so(tmp_path):
    session, _ = record_sim(load_microscope(CONFIGS / "montage.toml"), tmp_path / "rec", protocols=["dwell"])
    analysis = analyse(session)
    assert analysis.montage is None and montage_json(analysis) is None
    assert analysis.metrics["montage.unplaced_pieces"].reason == "the session has no montage"
    checks = metric_checks(analysis, load_holder("default"))
    assert checks["montage.unplaced_pieces"].limit is None  # nothing to judge, nothing missing
