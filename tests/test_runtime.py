"""course_lib.runtime: run size from one environment variable, seeding, device selection."""

import pytest
import torch

from course_lib import runtime


def test_run_size_reads_the_environment(monkeypatch):
    monkeypatch.delenv(runtime.ENV_VAR, raising=False)
    assert runtime.run_size() == "default" and runtime.pick(default=10, quick=1) == 10
    monkeypatch.setenv(runtime.ENV_VAR, "quick")
    assert runtime.is_quick() and runtime.pick(default=10, quick=1) == 1
    monkeypatch.setenv(runtime.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="default.*quick"):
        runtime.run_size()


def test_seed_everything_repeats():
    runtime.seed_everything(3)
    a = torch.randn(5)
    g = runtime.seed_everything(3)
    assert torch.equal(a, torch.randn(5))
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError):
        runtime.seed_everything(-1)


def test_pick_device(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    assert runtime.pick_device("cpu") == torch.device("cpu")
    assert runtime.pick_device().type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device"):
        runtime.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="not available"):
            runtime.pick_device("cuda")


def test_report_metrics_prints_one_parsable_line(capsys):
    import json

    out = runtime.report_metrics(accuracy=torch.tensor(0.912345), steps=3, name="x")
    line = capsys.readouterr().out.strip()
    assert line.startswith(runtime.METRICS_PREFIX)
    assert json.loads(line[len(runtime.METRICS_PREFIX):]) == out == {"accuracy": 0.9123, "name": "x", "steps": 3}
    with pytest.raises(TypeError, match="accuracy"):
        runtime.report_metrics(accuracy=[1, 2])


def test_configure_threads_is_one_thread_unless_asked(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv(runtime.THREADS_ENV_VAR, raising=False)
        torch.set_num_threads(2)
        assert runtime.configure_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv(runtime.THREADS_ENV_VAR, "2")
        assert runtime.configure_threads() == 2 and torch.get_num_threads() == 2
        assert runtime.configure_threads(1) == 1 and torch.get_num_threads() == 1  # an explicit number wins
        monkeypatch.setenv(runtime.THREADS_ENV_VAR, "many")
        with pytest.raises(ValueError, match="COURSE_NUM_THREADS='many'"):
            runtime.configure_threads()
        with pytest.raises(ValueError, match="positive int"):
            runtime.configure_threads(0)
    finally:
        torch.set_num_threads(before)
