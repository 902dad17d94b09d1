"""Imaging effects of the simulated microscope: scan rotation, scan-line jitter, defocus
blur from z, read noise, and a real image as the specimen."""

import dataclasses

import numpy as np
import pytest
import tifffile

from conftest import CONFIGS, SERIALEM_DATA
from stage_acceptance.config import ConfigError, load_microscope
from stage_acceptance.geometry import StagePosition
from stage_acceptance.registration import register
from stage_acceptance.sim.imaging import scan_line_jitter
from stage_acceptance.sim.microscope import SimulatedMicroscope
from stage_acceptance.sim.specimen import ImageSpecimen, read_image

NIST_MRC = SERIALEM_DATA / "test_000.mrc"


def scope(**sim_keys):
    base = load_microscope(CONFIGS / "case-a.toml")
    return SimulatedMicroscope(dataclasses.replace(base, sim=dataclasses.replace(base.sim, **sim_keys)))


def image_at(microscope, x_nm=0.0, y_nm=0.0, z_nm=0.0):
    microscope.move_to(StagePosition(x_nm=x_nm, y_nm=y_nm, z_nm=z_nm))
    return microscope.acquire()


def test_scan_rotation_turns_the_image():
    m = scope(scan_rotation_deg=90.0, step_noise_nm=0.0, dose=200.0)
    first, second = image_at(m), image_at(m, x_nm=300.0)
    shift = register(first, second).shift_px
    assert shift == pytest.approx([0.0, 300.0 / 15.0], abs=0.2)  # +x moves features down


def test_scan_line_jitter_shifts_each_line_by_its_offset():
    ramp = np.tile(np.arange(64.0), (8, 1))
    offsets = np.linspace(-1.5, 1.5, 8)
    jittered = scan_line_jitter(ramp, offsets)
    np.testing.assert_allclose(jittered[:, 10:50], ramp[:, 10:50] + offsets[:, None], atol=1e-4)


def test_jitter_makes_lines_disagree():
    still = scope(dose=500.0, step_noise_nm=0.0)
    shaky = scope(dose=500.0, step_noise_nm=0.0, scan_jitter_px=1.0)
    a, b = image_at(still), image_at(shaky)
    line_mismatch = lambda img: np.mean(np.abs(np.diff(img.astype(float), axis=0)))  # noqa: E731
    assert line_mismatch(b) > 1.05 * line_mismatch(a)


def high_frequency_power(image):
    return float(np.mean(np.diff(image.astype(float), axis=1) ** 2))


def test_defocus_blurs_away_from_focus():
    m = scope(dose=2000.0, defocus_blur_nm_per_um=20.0, focus_z_nm=1000.0, step_noise_nm=0.0)
    assert m.blur_px(1000.0) == pytest.approx(0.7)
    assert m.blur_px(-2000.0) == pytest.approx(np.hypot(0.7, 60.0 / 15.0))
    sharp = image_at(m, z_nm=1000.0)
    blurred = image_at(m, z_nm=-2000.0)
    assert high_frequency_power(blurred) < 0.7 * high_frequency_power(sharp)


def test_read_noise_adds_variance():
    quiet, noisy = scope(dose=20.0), scope(dose=20.0, read_noise_counts=5.0)
    extra = np.var(image_at(noisy)) - np.var(image_at(quiet))
    assert extra == pytest.approx(25.0, rel=0.25)


def write_config(tmp_path, sim_lines):
    text = (CONFIGS / "case-a.toml").read_text().replace("[sim]\n", "[sim]\n" + sim_lines)
    path = tmp_path / "scope.toml"
    path.write_text(text)
    return path


def test_real_image_as_specimen_is_tiled_by_mirroring(tmp_path):
    rng = np.random.default_rng(3)
    texture = np.kron(rng.random((150, 150)), np.ones((4, 4))) * 1000  # 600 px of 5 nm: 3 um, wider than the field
    tifffile.imwrite(tmp_path / "texture.tif", texture.astype(np.float32))
    config = load_microscope(write_config(tmp_path, 'specimen = "texture.tif"\nspecimen_pixel_nm = 5.0\n'))
    m = SimulatedMicroscope(dataclasses.replace(config, sim=dataclasses.replace(config.sim, step_noise_nm=0.0,
                                                                                     dose=500.0)))
    assert isinstance(m.specimen, ImageSpecimen)
    far = image_at(m, x_nm=20_000.0)  # 25 texture widths away: mirrored copies
    further = image_at(m, x_nm=20_150.0)
    assert np.std(far) > 0.1 * np.mean(far)
    assert register(far, further).shift_px == pytest.approx([10.0, 0.0], abs=0.3)


def test_mrc_specimen_reads_the_first_section():
    data = read_image(NIST_MRC)
    assert data.shape == (512, 512)  # the shipped frames are cropped to their central 512 x 512
    specimen = ImageSpecimen(data, 0.788)
    assert specimen.image.mean() == pytest.approx(1.0) and specimen.image.min() > 0


def test_specimen_file_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'sim.specimen' has bad value 'missing.tif'"):
        load_microscope(write_config(tmp_path, 'specimen = "missing.tif"\nspecimen_pixel_nm = 5.0\n'))
    (tmp_path / "t.tif").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"missing required key 'sim.specimen_pixel_nm'"):
        load_microscope(write_config(tmp_path, 'specimen = "t.tif"\n'))
    with pytest.raises(ValueError, match="t.tif: cannot read specimen image"):
        read_image(tmp_path / "t.tif")
