"""`make lab` really starts JupyterLab: launch its headless variant, fetch /lab and lesson 00, shut down."""

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSON0 = "notebooks/00_audio_and_data.ipynb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str, method: str = "GET"):
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.read()


@pytest.mark.slow
def test_make_lab_headless_serves_lesson_00():
    port, token = free_port(), secrets.token_hex(16)
    args = f"--port={port} --ServerApp.token={token}"
    proc = subprocess.Popen(["make", "-s", "lab-headless", f"LAB_ARGS={args}", "LAB_IP=127.0.0.1"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                status, _ = get(f"{base}/api/status", token)
                if status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
                pytest.fail(f"JupyterLab did not come up on port {port}:\n{out[-3000:]}")
            time.sleep(1)
        status, body = get(f"{base}/lab", token)
        assert status == 200 and b"JupyterLab" in body
        status, body = get(f"{base}/lab/tree/{LESSON0}", token)  # where make lab opens the browser
        assert status == 200 and b"JupyterLab" in body
        for folder in ("notebooks", "exercises", "solutions"):  # the whole course is served
            status, body = get(f"{base}/api/contents/{folder}", token)
            assert status == 200 and json.loads(body)["type"] == "directory"
        status, body = get(f"{base}/api/contents/{LESSON0}", token)
        model = json.loads(body)
        assert status == 200 and model["type"] == "notebook"
        assert model["content"]["metadata"]["kernelspec"]["name"] == "audio-course"
        status, body = get(f"{base}/api/kernelspecs", token)
        assert "audio-course" in json.loads(body)["kernelspecs"]
        get(f"{base}/api/shutdown", token, method="POST")
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
