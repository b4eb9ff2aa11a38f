"""``make gpu-smoke`` (course_lib.train.gpu_smoke) on a CPU: the no-GPU error, the table, the family list from
the registry, the stand-ins and the resume comparison, the engine's fused AdamW option, and one family through
the whole path (run A, run B resumed in a new process, the check) with the tiny config on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from course_lib.train import ConfigError, Trainer, get_family, load_from_run
from course_lib.train import checkpoint as ckpt
from course_lib.train import gpu_smoke as gs
from course_lib.train.config import OptimConfig
from course_lib.train.engine import build_optimizer, fused_adamw_supported
from course_lib.train.families import _REGISTRY, Family, list_families

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

REPO = Path(__file__).resolve().parents[1]


# ---- no GPU ---------------------------------------------------------------------------------------------


def test_without_a_gpu_it_fails_with_one_line_and_status_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gs.main(["--steps", "4", "--out", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: make gpu-smoke needs a CUDA GPU (torch.cuda.is_available() is False)")
    assert "Traceback" not in err and not any(tmp_path.iterdir())  # nothing written


def test_without_a_gpu_as_a_process_no_traceback():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "course_lib.train.gpu_smoke", "--steps", "2"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("error: make gpu-smoke needs a CUDA GPU (torch.cuda.is_available() is False)")


def test_usage_errors_are_status_2(capsys):
    assert gs.main(["--device", "cpu", "--families", "nope"]) == 2
    assert "unknown family nope" in capsys.readouterr().err
    assert gs.main(["--device", "cpu", "--steps", "1"]) == 2
    assert "--steps must be >= 2" in capsys.readouterr().err
    assert gs.main(["--device", "cpu", "optim.lr"]) == 2
    assert "key=value" in capsys.readouterr().err


# ---- families, overrides, stand-ins ----------------------------------------------------------------------


def test_the_family_list_comes_from_the_registry(monkeypatch):
    assert gs.selected_families() == list_families()
    assert {"mel_autoencoder", "melgan", "audiogen", "diffsound", "n2m_generator"} <= set(gs.selected_families())

    class Newcomer(Family):
        name = "smoke_test_newcomer"

    monkeypatch.setitem(_REGISTRY, Newcomer.name, Newcomer())  # a family registered later is included
    assert Newcomer.name in gs.selected_families()
    assert gs.selected_families("melgan, smoke_test_newcomer") == ["melgan", "smoke_test_newcomer"]
    with pytest.raises(ConfigError, match="unknown family nope.*known families: .*melgan"):
        gs.selected_families("melgan,nope")


def test_base_overrides_checkpoint_at_half_and_no_eval():
    over = gs.base_overrides(device="cuda", steps=20, compile=True)
    assert {"train.device=cuda", "train.precision=bf16", "train.compile=true", "train.deterministic=true",
            "train.max_steps=20", "train.ckpt_every=10", "eval.every=0", "eval.at_end=false",
            "train.log_every=1", "data.num_workers=0"} <= set(over)
    assert "train.num_threads=1" in gs.base_overrides(device="cpu", steps=2)
    assert "data.num_workers=0" not in gs.base_overrides(device="cuda", steps=2, pooled=False)
    cfg = get_family("melgan").load_config("paper", over, validate=False)  # every key exists
    assert cfg.train.ckpt_every == 10 and cfg.train.keep_last >= 2 and not cfg.eval.at_end
    with pytest.raises(ValueError):
        gs.base_overrides(device="cuda", steps=1)


def test_stand_ins_for_what_paper_configs_name_but_this_machine_lacks():
    def plan(family, *overrides):
        cfg = get_family(family).load_config("paper", list(overrides), validate=False)
        return {p.key: p for p in gs.plan_stand_ins(cfg)}

    audiogen = plan("audiogen")
    assert audiogen["tokenizer.codec"].detail == {"family": "codec", "size": "paper"}
    assert audiogen["conditioning.text_encoder"].detail == {"text_kind": "t5", "width": 1024}
    assert plan("diffsound")["tokenizer.vqvae"].detail["family"] == "mel_vqvae"
    assert plan("diffsound")["conditioning.text_encoder"].detail == {"text_kind": "clip", "width": 512}
    assert plan("n2m_generator")["conditioning.text_encoder"].detail["width"] == 4096  # model.unet.text_dim
    assert plan("codec") == {} and plan("melgan") == {}
    # shipped tokenizers and local folders are used as they are; a folder or hub dataset becomes generated data,
    # and an eval source goes (the smoke test does not evaluate)
    assert plan("audiogen", "tokenizer.codec=pretrained:codec_course", f"conditioning.text_encoder=t5:{REPO}") == {}
    data = plan("melgan", f"data.eval_source={REPO}", "data.source=hub:someone/speech")
    assert data["data.source"].detail == {"source": "generated:mixed"}
    assert data["data.eval_source"].detail == {"source": "none"}
    assert all(p.note() for p in audiogen.values())


def test_a_text_encoder_stand_in_loads_offline(tmp_path):
    from course_lib.text import load_text_encoder

    item = gs.StandIn("conditioning.text_encoder", "t5:some/hub-name", "text_encoder",
                      {"text_kind": "t5", "width": 16})
    (override,) = gs.make_stand_ins([item], tmp_path)
    key, spec = override.split("=", 1)
    assert key == "conditioning.text_encoder" and spec.startswith("t5:") and Path(spec[3:]).is_dir()
    assert load_text_encoder(spec, local_files_only=True).dim == 16
    assert gs.make_stand_ins([item], tmp_path) == [override]  # built once, reused


def test_pooled_dataset_cycles_and_keeps_length_and_rate():
    class Base:
        sample_rate = 16_000

        def __len__(self):
            return 10

        def __getitem__(self, i):
            return {"audio": torch.full((1, 4), float(i))}

    pool = gs.PooledDataset(Base(), 3)
    assert len(pool) == 10 and pool.sample_rate == 16_000 and not hasattr(pool, "collate_fn")
    assert [float(pool[i]["audio"][0, 0]) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


# ---- the resume check and the table ---------------------------------------------------------------------


def _fake_run(folder: Path, weights: dict[str, torch.Tensor], losses: list[float], step: int = 4) -> Path:
    ck = folder / ckpt.CHECKPOINTS / ckpt.step_dir_name(step)
    ck.mkdir(parents=True)
    save_file(weights, str(ck / ckpt.MODEL_FILE))
    lines = [json.dumps({"kind": "train", "step": s + 1, "loss": v, "steps_per_second": 2.0 + s})
             for s, v in enumerate(losses)]
    (folder / "metrics.jsonl").write_text("\n".join([*lines, json.dumps({"kind": "eval", "step": step})]) + "\n")
    return folder


def test_compare_runs_exact_within_tolerance_and_differs(tmp_path):
    w = {"a": torch.linspace(-1, 1, 100), "count": torch.arange(3)}
    ref = _fake_run(tmp_path / "ref", w, [4.0, 3.0, 2.0, 1.0])
    same = _fake_run(tmp_path / "same", {k: v.clone() for k, v in w.items()}, [9.0, 9.0, 2.0, 1.0])
    assert gs.compare_runs(ref, same, from_step=2)["verdict"] == "exact"  # steps before the resume don't count
    close = _fake_run(tmp_path / "close", {**w, "a": w["a"] * (1 + 1e-3)}, [4.0, 3.0, 2.002, 1.0])
    cmp = gs.compare_runs(ref, close, from_step=2)
    assert cmp["verdict"] == "ok" and cmp["weights_rel"] == pytest.approx(1e-3, rel=1e-3)
    assert cmp["loss_rel"] == pytest.approx(1e-3) and gs.resume_text(cmp) == "ok (w 1.0e-03, loss 1.0e-03)"
    assert gs.compare_runs(ref, close, from_step=2, tol=1e-4)["verdict"] == "DIFFERS"
    far = _fake_run(tmp_path / "far", {**w, "a": -w["a"]}, [4.0, 3.0, 2.0, 1.0])
    assert gs.compare_runs(ref, far, from_step=2)["verdict"] == "DIFFERS"
    counts = _fake_run(tmp_path / "counts", {**w, "count": torch.arange(3) + 1}, [4.0, 3.0, 2.0, 1.0])
    assert "count (integer) differs" in gs.compare_runs(ref, counts, from_step=2)["detail"]
    short = _fake_run(tmp_path / "short", w, [4.0, 3.0, 2.0], step=3)
    assert gs.compare_runs(ref, short, from_step=2)["verdict"] == "DIFFERS"


def test_steps_per_second_skips_the_warm_up(tmp_path):
    run = _fake_run(tmp_path / "r", {"a": torch.zeros(1)}, [1.0] * 8)  # step s runs at 1 + s steps/s
    rates = [1.0 + s for s in range(1, 9)]
    assert gs.steps_per_second(run, 8) == pytest.approx(6 / sum(1 / r for r in rates[2:]))  # 8 // 4 = 2 skipped
    assert gs.steps_per_second(run, 2) == pytest.approx(8 / sum(1 / r for r in rates))
    assert gs.steps_per_second(tmp_path / "none", 8) is None


def test_table_formatting():
    rows = [gs.Row("audiogen", ok=True, params=249_123_456, batch="4", steps_per_s=3.456, peak_bytes=37 * 2**30,
                   resume="exact", notes=["text: random 1-layer t5 1024-d for t5:t5-large"]),
            gs.Row("melgan", ok=True, params=43_100, batch="8 (from 16)", steps_per_s=123.4, peak_bytes=300 * 2**20,
                   resume="ok (w 1.0e-03, loss 2.0e-03)"),
            gs.Row("n2m_generator", notes=["run A error: RuntimeError: boom"])]
    text = gs.format_table(rows, ["gpu-smoke on a test"])
    lines = text.splitlines()
    assert lines[0] == "gpu-smoke on a test"
    assert lines[1].split() == ["family", "params", "batch", "steps/s", "peak", "GPU", "mem", "resume", "notes"]
    assert set(lines[2].replace(" ", "")) == {"-"}
    starts = [lines[1].index(c) for c in ("params", "batch", "steps/s", "peak GPU mem", "resume", "notes")]
    for line, cells in zip(lines[3:6], (["249.1 M", "4", "3.46", "37.00 GiB", "exact", "text:"],
                                         ["43.1 k", "8 (from 16)", "123", "300 MiB", "ok (w", ""],
                                         ["-", "-", "-", "-", "FAILED", "run A error"])):
        assert [line[s:].startswith(c) for s, c in zip(starts, cells)] == [True] * 6, line  # aligned columns
    assert lines[-1] == "2/3 families trained and resumed within tolerance"


def test_out_of_memory_halves_the_batch_and_a_nondeterministic_op_turns_determinism_off(monkeypatch, tmp_path):
    answers = iter([{"status": "oom", "message": "OutOfMemoryError: CUDA out of memory"},
                    {"status": "nondeterministic", "message": "RuntimeError: op does not have a deterministic "
                                                              "implementation"},
                    {"status": "error", "message": "RuntimeError: boom"}])
    specs = []

    def launch(spec, folder, name, timeout):
        specs.append(spec)
        return next(answers)

    monkeypatch.setattr(gs, "_launch", launch)
    opts = gs.Options(device="cpu", size="tiny", steps=2)
    row = gs.smoke_family("mel_autoencoder", opts, tmp_path, tmp_path / "stand_ins")  # tiny batch: 8
    assert not row.ok and row.batch == "4 (from 8)" and len(specs) == 3
    assert "data.batch_size=4" not in specs[0]["overrides"] and "data.batch_size=4" in specs[1]["overrides"]
    assert specs[1]["overrides"][-1] != "train.deterministic=false"
    assert specs[2]["overrides"][-1] == "train.deterministic=false" and specs[2]["pool"] == 8
    assert any(n.startswith("train.deterministic off") for n in row.notes)
    assert any("batch 8 -> 4" in n for n in row.notes) and row.notes[-1] == "run A error: RuntimeError: boom"


def test_compile_is_opt_in_by_flag_or_environment(monkeypatch):
    monkeypatch.delenv(gs.COMPILE_ENV, raising=False)
    assert not gs._parser().parse_args([]).compile and gs._parser().parse_args(["--compile"]).compile
    monkeypatch.setenv(gs.COMPILE_ENV, "1")
    assert gs._parser().parse_args([]).compile


# ---- the engine's fused AdamW option ---------------------------------------------------------------------


def test_build_optimizer_is_plain_by_default_and_fused_on_request():
    model = torch.nn.Linear(4, 3)
    assert not build_optimizer(model, OptimConfig()).defaults.get("fused")
    if not fused_adamw_supported("cpu"):
        pytest.skip("this torch has no fused AdamW for the CPU")
    assert build_optimizer(model, OptimConfig(), fused=True).defaults["fused"] is True


@pytest.mark.skipif(not fused_adamw_supported("cpu"), reason="this torch has no fused AdamW for the CPU")
def test_trainer_with_fused_adamw_trains_like_plain_adamw(tmp_path):
    family = get_family("mel_autoencoder")
    fast = ["train.progress=false", "train.tensorboard=false", "model.channels=8", "data.batch_size=4",
            "data.train_size=8", "eval.every=0", "eval.at_end=false", "train.max_steps=3", "train.log_every=1"]
    runs = {}
    for fused in (False, True):
        cfg = family.load_config("tiny", [f"train.run_dir={tmp_path / str(fused)}", *fast])
        trainer = Trainer(family, cfg, fused_adamw=fused)
        trainer.fit()
        assert bool(trainer.optimizer.defaults.get("fused")) is fused
        runs[fused] = load_from_run(tmp_path / str(fused))
    for (name, a), b in zip(runs[False].state_dict().items(), runs[True].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.skipif(not fused_adamw_supported("cpu"), reason="this torch has no fused AdamW for the CPU")
def test_a_resumed_run_uses_the_kernel_it_asks_for_not_the_checkpoints(tmp_path):
    family = get_family("mel_autoencoder")
    fast = ["train.progress=false", "train.tensorboard=false", "model.channels=8", "data.batch_size=4",
            "data.train_size=8", "eval.every=0", "eval.at_end=false", "train.ckpt_every=2"]
    for first, then in ((False, True), (True, False)):
        run = f"train.run_dir={tmp_path / str(first)}"
        Trainer(family, family.load_config("tiny", [run, *fast, "train.max_steps=2"]), fused_adamw=first).fit()
        trainer = Trainer(family, family.load_config("tiny", [run, *fast, "train.max_steps=4"]), fused_adamw=then)
        with pytest.warns(UserWarning, match="train.max_steps"):
            assert trainer.fit()["resumed_from_step"] == 2
        assert bool(trainer.optimizer.param_groups[0]["fused"]) is then
        assert all(float(st["step"]) == 4 for st in trainer.optimizer.state.values())


# ---- the whole path on the CPU ---------------------------------------------------------------------------


@pytest.mark.slow
def test_cpu_dry_run_trains_checkpoints_and_resumes_exactly(tmp_path, capsys):
    # run A and run B are two new Python processes: about 20-40 s on 2 busy cores
    code = gs.main(["--device", "cpu", "--steps", "2", "--families", "mel_autoencoder", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "tiny configs, 2 steps (checkpoint at 1" in out and "precision bf16" in out
    row = next(line for line in out.splitlines() if line.startswith("mel_autoencoder"))
    assert " exact" in row and "1/1 families trained and resumed within tolerance" in out
    (work,) = tmp_path.iterdir()
    result = json.loads((work / "results.json").read_text())
    (r,) = result["rows"]
    assert r["ok"] and r["resume"] == "exact" and r["params"] > 0 and r["peak_bytes"] is None and r["batch"] == "8"
    assert (work / "table.txt").read_text().strip() == out.strip()
    assert not (work / "mel_autoencoder" / "A").exists()  # run folders are removed unless --keep-runs
    assert (work / "mel_autoencoder" / "B.log").is_file()
