"""CURVE authentication over loopback, and the ``stage-acceptance`` command line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest

from test_remote import CASE_A, free_port, start_server, stop_server
from stage_acceptance.acceptance import open_microscope
from stage_acceptance.cli import main
from stage_acceptance.config import load_microscope
from stage_acceptance.remote.client import RemoteError, RemoteMicroscope
from stage_acceptance.remote.keys import KeysError, create_keys


@pytest.fixture(scope="module")
def curve_server(tmp_path_factory):
    """A server that admits only the client key of its key folder: (endpoint, keys folder)."""
    keys = tmp_path_factory.mktemp("keys") / "curve"
    assert main(["keys", str(keys)]) == 0
    port = free_port()
    process = start_server(CASE_A, port, "--keys", str(keys))
    yield f"tcp://127.0.0.1:{port}", keys
    stop_server(process)


def test_keys_command_creates_both_pairs_and_never_overwrites(tmp_path, capsys):
    assert main(["keys", str(tmp_path / "k")]) == 0
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret", "authorized/client.key"):
        assert (tmp_path / "k" / name).is_file()
    assert main(["keys", str(tmp_path / "k")]) == 2
    error = capsys.readouterr().err
    assert "already holds keys" in error and error.count("\n") == 1


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_secret_keys_are_private(tmp_path):
    root = create_keys(tmp_path / "k")
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "authorized").stat().st_mode) == 0o700
    for name in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o600, name
    (tmp_path / "empty").mkdir(mode=0o755)
    assert stat.S_IMODE(create_keys(tmp_path / "empty").stat().st_mode) == 0o700
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(KeysError, match="is not an empty folder"):
        create_keys(tmp_path / "busy")


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_server_refuses_a_secret_key_others_can_read(tmp_path, capsys, mode):
    keys = create_keys(tmp_path / "k")
    (keys / "server.key_secret").chmod(mode)
    status = main(["serve", "--microscope", CASE_A, "--bind", f"tcp://127.0.0.1:{free_port()}", "--keys", str(keys)])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert captured.err.count("\n") == 1
    assert f"{keys / 'server.key_secret'}: secret key is open to group or others (mode 0{mode:o})" in captured.err


def test_client_with_the_keys_is_served(curve_server):
    endpoint, keys = curve_server
    client = RemoteMicroscope(endpoint, timeout_s=5.0, keys_dir=keys)
    assert client.name == "case-a" and client.acquire().shape == (128, 128)
    client.close()


def test_client_keys_come_from_the_config(curve_server, tmp_path):
    endpoint, keys = curve_server
    path = tmp_path / "r.toml"
    path.write_text(f'name = "r"\nkind = "remote"\n[remote]\nendpoint = "{endpoint}"\ntimeout_s = 5.0\n'
                    f'keys = "{keys}"\n')
    microscope = open_microscope(load_microscope(path))
    assert microscope.pixel_size_nm == 15.0
    microscope.close()


def test_unauthenticated_clients_are_refused(curve_server, tmp_path):
    endpoint, _ = curve_server
    start = time.monotonic()
    with pytest.raises(RemoteError, match="no reply to 'describe' within 0.5 s"):
        RemoteMicroscope(endpoint, timeout_s=0.5)
    stranger = create_keys(tmp_path / "stranger")  # a valid pair the server never admitted
    (stranger / "server.key").write_bytes((curve_server[1] / "server.key").read_bytes())
    with pytest.raises(RemoteError, match="no reply to 'describe'"):
        RemoteMicroscope(endpoint, timeout_s=0.5, keys_dir=stranger)
    assert time.monotonic() - start < 4.0


def test_missing_key_files_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeysError, match="client.key_secret: key file not found"):
        RemoteMicroscope("tcp://127.0.0.1:1", timeout_s=0.5, keys_dir=tmp_path / "empty")


def test_non_loopback_bind_without_keys_is_refused(capsys):
    status = main(["serve", "--microscope", CASE_A, "--bind", f"tcp://0.0.0.0:{free_port()}"])
    error = capsys.readouterr().err
    assert status == 2 and "is not loopback" in error and error.count("\n") == 1


def test_unknown_microscope_is_a_one_line_error(capsys):
    assert main(["serve", "--microscope", "no-such-scope"]) == 2
    error = capsys.readouterr().err
    assert "unknown microscope 'no-such-scope'" in error and error.count("\n") == 1


def test_ctrl_c_stops_the_server_cleanly():
    port = free_port()
    process = start_server(CASE_A, port)
    try:
        process.send_signal(subprocess.signal.SIGINT)
        assert process.wait(timeout=10) == 0
        process.log_reader.join(timeout=10)
        assert "stage-acceptance: stopped" in "".join(process.log_lines)
    finally:
        stop_server(process)


def test_console_script_entry_point_is_installed():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "stage-acceptance"]
    assert script.value == "stage_acceptance.cli:main"
    result = subprocess.run([sys.executable, "-m", "stage_acceptance.cli", "--help"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and "serve" in result.stdout and "keys" in result.stdout
