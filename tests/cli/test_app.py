"""``facemogle app``: serves the page offline on a model, prints the URL, stops on Ctrl-C leaving no files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("gradio", reason="facemogle app needs the [app] extra (gradio)")

from facemogle.cli import main  # noqa: E402


def test_bad_arguments_are_refused_before_the_model_loads(capsys, monkeypatch):
    import facemogle.specs

    monkeypatch.setattr(facemogle.specs, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    for argv, message in ((["--port", "0"], "--port must be in 1..65535"), (["--port", "70000"], "--port must be in"),
                          (["--model", "sd15"], "unknown model 'sd15'"), (["--device", "gpu3"], "unknown device")):
        assert main(["app", *argv]) == 2
        assert message in capsys.readouterr().err


def test_serves_the_page_until_interrupted_and_removes_its_files(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}  # the app's folder goes under TMPDIR
    env.pop("GRADIO_TEMP_DIR", None)
    process = subprocess.Popen([sys.executable, "-m", "facemogle", "app", "--model", "tiny-random", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline, printed = time.monotonic() + 180, ""
        while f"http://127.0.0.1:{port}" not in printed:
            line = process.stdout.readline()
            assert line or process.poll() is None, printed
            printed += line
            assert time.monotonic() < deadline, printed
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read().decode()
        assert "facemogle" in page
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("facemogle-app-")]  # its folder, while serving
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode in (0, 130)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("facemogle-app-")]  # removed at the end
