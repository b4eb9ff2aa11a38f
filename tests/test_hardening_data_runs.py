"""Issue #18, items 5-11: data loaders that stay inside their folder, exports that delete only what the course
wrote, non-finite WAVs named at load, one writer per run folder, damaged or tampered checkpoints, and CLI
mistakes reported as one ``error:`` line before anything is built.

Every test here failed on the code before the fix. Only names that existed then are imported at module level,
so each test fails there for its own reason (a silent load, a deleted file, a traceback), not at import.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from course_lib.data.clip import Clip
from course_lib.data.export import export_clips
from course_lib.data.loaders import load_captioned
from course_lib.train import CheckpointError, TrainingError, get_family, load_from_run, train
from course_lib.train import checkpoint as ckpt
from course_lib.train.__main__ import main as train_main
from course_lib.train.config import DataConfig
from course_lib.train.data import build_dataset
from course_lib.train.families.mel_autoencoder import MelAutoencoderFamily

SR = 16_000
FAST = ["train.progress=false", "train.tensorboard=false", "model.channels=8", "data.batch_size=4",
        "data.train_size=8", "data.eval_size=4", "eval.every=0", "eval.at_end=false", "train.num_threads=1",
        "train.max_steps=2"]


def tone(freq: float = 440.0, seconds: float = 0.25) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_rows(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def tiny(run_dir, *overrides):
    return get_family("mel_autoencoder").load_config("tiny", [f"train.run_dir={run_dir}", *FAST, *overrides])


def one_error_line(err: str) -> str:
    """The stderr of a CLI that failed: exactly one ``error:`` line and no traceback; returns that line."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------------------------------------
# 5. Paths that escape the dataset folder
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture()
def dataset(tmp_path):
    """tmp/data/train/{a.wav, metadata.jsonl} and, outside it, tmp/outside/secret.wav."""
    split = tmp_path / "data" / "train"
    split.mkdir(parents=True)
    sf.write(str(split / "a.wav"), tone(), SR)
    (tmp_path / "outside").mkdir()
    sf.write(str(tmp_path / "outside" / "secret.wav"), tone(880.0), SR)
    return tmp_path


@pytest.mark.parametrize("kind", ["parent", "parent_missing", "etc_passwd", "absolute", "symlink"])
def test_paths_outside_the_dataset_folder_are_refused_without_saying_whether_they_exist(dataset, kind):
    split = dataset / "data" / "train"
    secret = dataset / "outside" / "secret.wav"
    value = {"parent": "../../outside/secret.wav", "parent_missing": "../../outside/missing.wav",
             "etc_passwd": "../../../../../../../../etc/passwd", "absolute": str(secret), "symlink": "link.wav"}[kind]
    if kind == "symlink":
        os.symlink(secret, split / "link.wav")  # inside by name, outside once resolved
    write_rows(split / "metadata.jsonl", [{"file_name": "a.wav", "text": "inside"}, {"file_name": value, "text": "x"}])
    with pytest.raises(ValueError, match="leads outside the dataset folder") as err:
        load_captioned(dataset / "data")
    message = str(err.value)
    assert "row 1 of" in message and "allow_outside=True" in message
    assert "not found" not in message and "could not read" not in message  # nothing about the file itself
    # the engine reads data.source through the same loader: refused, unless the user opts in
    with pytest.raises(TrainingError, match="leads outside the dataset folder"):
        build_dataset(DataConfig(source=str(dataset / "data")), "train")
    if kind in ("parent", "absolute", "symlink"):  # the file exists: an explicit opt-in reads it
        clips = load_captioned(dataset / "data", allow_outside=True)
        assert [c.caption for c in clips] == ["inside", "x"]
        ds = build_dataset(DataConfig(source=str(dataset / "data"), allow_outside_paths=True), "train")
        assert len(ds) == 2


def test_existing_and_missing_outside_files_get_the_same_message(dataset):
    split = dataset / "data" / "train"
    messages = []
    for name in ("secret.wav", "missing.wav"):
        write_rows(split / "metadata.jsonl", [{"file_name": f"../../outside/{name}", "text": "x"}])
        with pytest.raises(ValueError) as err:
            load_captioned(dataset / "data")
        messages.append(str(err.value).replace(name, "NAME"))
    assert messages[0] == messages[1]


def test_audio_root_and_relative_paths_inside_the_folder_still_load(dataset):
    audio = dataset / "data" / "train"
    write_rows(dataset / "data" / "table.jsonl", [{"path": "a", "caption": "no suffix, found beside"}])
    (clip,) = load_captioned(dataset / "data" / "table.jsonl", audio_root=audio)  # Clotho-style
    assert clip.caption == "no suffix, found beside"
    write_rows(dataset / "data" / "table.jsonl", [{"path": "train/./a.wav", "caption": "relative"}])
    assert [c.caption for c in load_captioned(dataset / "data" / "table.jsonl")] == ["relative"]


# ---------------------------------------------------------------------------------------------------------
# 6. export --overwrite deletes only what the course wrote
# ---------------------------------------------------------------------------------------------------------


def test_export_overwrite_never_deletes_the_users_own_audio(tmp_path):
    from course_lib.data.__main__ import main as data_main

    # a folder of the user's own recordings with their own metadata: not a course export
    mine = tmp_path / "mine" / "train"
    mine.mkdir(parents=True)
    sf.write(str(mine / "my_recording.wav"), tone(), SR)
    write_rows(mine / "metadata.jsonl", [{"file_name": "my_recording.wav", "text": "my voice"}])
    with pytest.raises(FileExistsError, match="did not write.*nothing was deleted"):
        export_clips([Clip(tone(), SR, "a tone", {}, "x")], tmp_path / "mine", "train", overwrite=True)
    assert sorted(p.name for p in mine.iterdir()) == ["metadata.jsonl", "my_recording.wav"]

    # the CLI on a course export into which the user copied a file: the course's files go, the user's stays
    out = tmp_path / "course"
    args = ["export", "--kind", "sound_events", "--out", str(out), "--train", "1", "--valid", "0", "--test", "0",
            "--clip-seconds", "1"]
    assert data_main(args) == 0
    sf.write(str(out / "train" / "added_by_me.wav"), tone(), SR)
    exported = sorted(p.name for p in (out / "train").glob("train-*.wav"))
    with pytest.warns(UserWarning, match="added_by_me.wav"):
        assert data_main([*args, "--overwrite"]) == 0
    assert (out / "train" / "added_by_me.wav").is_file()
    assert sorted(p.name for p in (out / "train").glob("train-*.wav")) == exported  # rewritten, not piled up
    assert [c.caption for c in load_captioned(out)] != []


# ---------------------------------------------------------------------------------------------------------
# 7. A WAV with NaN samples is named at load
# ---------------------------------------------------------------------------------------------------------


def test_non_finite_wav_is_named_at_load_and_in_training(tmp_path, capsys, monkeypatch):
    split = tmp_path / "nan" / "train"
    split.mkdir(parents=True)
    sf.write(str(split / "a.wav"), tone(), SR, subtype="FLOAT")
    bad = tone(330.0)
    bad[[10, 20]], bad[30] = np.nan, np.inf
    sf.write(str(split / "b.wav"), bad, SR, subtype="FLOAT")
    write_rows(split / "metadata.jsonl", [{"file_name": "a.wav", "text": "fine"}, {"file_name": "b.wav", "text": "bad"}])
    with pytest.raises(ValueError, match=r"b\.wav holds 3 non-finite sample\(s\)"):
        load_captioned(tmp_path / "nan")
    # training reads it lazily: the run stops with one error line that names the file
    monkeypatch.chdir(tmp_path)
    code = train_main(["mel_autoencoder", f"train.run_dir={tmp_path / 'run'}", *FAST, "data.batch_size=1",
                       f"data.source={tmp_path / 'nan'}", "data.shuffle=false"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and "b.wav" in line and "non-finite" in line, line


# ---------------------------------------------------------------------------------------------------------
# 8. One writer per run folder
# ---------------------------------------------------------------------------------------------------------


def _lock(run_dir, pid: int, host: str | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                  "started": "2025-01-01 12:00:00 +0000"}))


@pytest.mark.parametrize("host", ["this", "another-machine"])
def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path, capsys, host):
    run = tmp_path / "run"
    pid = os.getpid() if host == "this" else 1
    _lock(run, pid, None if host == "this" else host)  # a live run holds it (this test process, or elsewhere)
    before = (run / "run.lock").read_text()
    assert train_main(["mel_autoencoder", f"train.run_dir={run}", *FAST, "optim.lr=1e-4"]) == 1
    line = one_error_line(capsys.readouterr().err)
    shown = socket.gethostname() if host == "this" else host
    assert f"run folder {run} is in use by PID {pid} on host {shown}" in line and "train.run_dir" in line, line
    assert (run / "run.lock").read_text() == before and not (run / "checkpoints").exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its PID no longer runs: the lock it "left" is stale
    run = tmp_path / "run"
    _lock(run, gone.pid)
    with pytest.warns(UserWarning, match=f"took over the stale lock .*PID {gone.pid}"):
        assert train("mel_autoencoder", tiny(run))["steps"] == 2
    assert not (run / "run.lock").exists()  # released at the end


def test_run_lock_api_refuses_a_second_holder_and_releases_only_its_own(tmp_path):
    from course_lib.train.errors import RunInUseError

    first = ckpt.acquire_run_lock(tmp_path / "run")
    holder = json.loads(first.path.read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["started"]
    with pytest.raises(RunInUseError, match=f"in use by PID {os.getpid()}"):
        ckpt.acquire_run_lock(tmp_path / "run")
    first.release()
    with ckpt.acquire_run_lock(tmp_path / "run") as second:
        first.release()  # a stale handle never removes the lock another holder took
        assert second.path.is_file()
    assert not second.path.exists()


def test_leftovers_of_another_config_are_not_mixed_with_a_new_run(tmp_path, capsys):
    run = tmp_path / "run"
    train("mel_autoencoder", tiny(run))
    shutil.rmtree(run / "checkpoints")  # as if it had been killed before its first checkpoint
    assert train_main(["mel_autoencoder", f"train.run_dir={run}", *FAST, "optim.lr=1e-4"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "optim.lr (0.003 -> 0.0001)" in line and "--no-resume" in line, line
    with pytest.warns(UserWarning, match="replaced"):
        assert train_main(["mel_autoencoder", f"train.run_dir={run}", *FAST, "optim.lr=1e-4", "--no-resume"]) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)) and all(r["lr"] <= 1e-4 for r in records)  # one run's log, not two mixed


def test_keep_last_never_prunes_a_newer_checkpoint(tmp_path):
    family = get_family("mel_autoencoder")
    cfg = tiny(tmp_path / "run")
    model = family.build_model(cfg.model)
    for step, keep in ((20, 3), (30, 3), (10, 1)):  # the folder holds newer checkpoints than the one written last
        ckpt.save_checkpoint(tmp_path / "run", step, family=family.name, config={}, model=model, state={"step": step},
                             keep_last=keep)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step_00000010", "step_00000020",
                                                                         "step_00000030"]


# ---------------------------------------------------------------------------------------------------------
# 9. Damaged checkpoints: named, and skipped for the newest one that loads
# ---------------------------------------------------------------------------------------------------------


BASE = ("train.max_steps=4", "train.ckpt_every=2", "train.keep_last=3", "eval.at_end=true", "eval.num_samples=0",
        "eval.batches=1")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny run with checkpoints at steps 2 and 4 and a best checkpoint (eval at step 4)."""
    run = tmp_path_factory.mktemp("base") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train("mel_autoencoder", tiny(run, *BASE))
    return run


def _damage(folder, how: str) -> str:
    if how == "truncated_weights":
        data = (folder / ckpt.MODEL_FILE).read_bytes()
        (folder / ckpt.MODEL_FILE).write_bytes(data[: len(data) // 2])
        return ckpt.MODEL_FILE
    if how == "pickle_as_weights":
        torch.save({"w": torch.zeros(3)}, folder / ckpt.MODEL_FILE)
        return ckpt.MODEL_FILE
    if how == "empty_state":
        (folder / ckpt.STATE_FILE).write_bytes(b"")
        return ckpt.STATE_FILE
    (folder / ckpt.CONFIG_FILE).write_text('{"family": "mel_autoencoder", "config": {')
    return ckpt.CONFIG_FILE


@pytest.mark.parametrize("how", ["truncated_weights", "pickle_as_weights", "empty_state", "bad_config"])
def test_damaged_checkpoint_is_named_and_resume_falls_back(finished_run, tmp_path, how):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    newest = run / "checkpoints" / "step_00000004"
    name = _damage(newest, how)
    if how != "empty_state":  # load_from_run reads weights and config, not the training state
        with pytest.warns(UserWarning, match=rf"skipped 1 damaged .*step_00000004/{name}.*loaded .*step_00000002"):
            model = load_from_run(run)
        expected = get_family("mel_autoencoder").build_model(tiny(run).model)
        ckpt.load_weights(expected, finished_run / "checkpoints" / "step_00000002" / ckpt.MODEL_FILE)
        assert ckpt.state_dict_sha256(model) == ckpt.state_dict_sha256(expected)
    with pytest.warns(UserWarning, match=rf"{name}.*resuming from .*step_00000002"):
        summary = train("mel_autoencoder", tiny(run, *BASE))
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4
    assert (run / "checkpoints" / "damaged_step_00000004" / name).is_file()  # kept for inspection


@pytest.mark.parametrize("content", [b"", b"not a zip", "pickle"])
def test_training_state_errors_name_the_file_and_never_advise_unpickling(tmp_path, content):
    folder = tmp_path / "step_00000001"
    folder.mkdir()
    if content == "pickle":
        with open(folder / ckpt.STATE_FILE, "wb") as fh:
            pickle.dump({"run": os.system}, fh)  # what a malicious state.pt would carry
    else:
        (folder / ckpt.STATE_FILE).write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        ckpt.load_training_state(folder)
    message = str(err.value)
    assert str(folder / ckpt.STATE_FILE) in message
    assert "weights_only" not in message and "arbitrary code" not in message, message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # torch's advice is not chained in


# ---------------------------------------------------------------------------------------------------------
# 10. best.json that leaves the run, a tampered model config
# ---------------------------------------------------------------------------------------------------------


def test_best_pointer_outside_the_run_is_refused(finished_run, tmp_path):
    ours, other = tmp_path / "ours", tmp_path / "other"
    shutil.copytree(finished_run, ours)
    shutil.copytree(finished_run, other)
    best = ours / "checkpoints" / "best.json"
    pointer = json.loads(best.read_text())
    for escape in ("../../other/checkpoints/step_00000004", str(other / "checkpoints" / "step_00000004")):
        best.write_text(json.dumps({**pointer, "dir": escape}))
        with pytest.raises(CheckpointError, match=r"best\.json: 'dir' must name a best_step_XXXXXXXX folder inside"):
            load_from_run(ours, "best")


def test_tampered_model_size_is_refused_before_allocating(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    best_dir = run / "checkpoints" / json.loads((run / "checkpoints" / "best.json").read_text())["dir"]
    meta = json.loads((best_dir / ckpt.CONFIG_FILE).read_text())
    meta["config"]["model"]["channels"] = 200_000  # about 800 GB of conv weights
    (best_dir / ckpt.CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"config\.json: the model it describes would have .* parameters .*"
                                              r"model\.channels=200000"):
        load_from_run(run, "best")


# ---------------------------------------------------------------------------------------------------------
# 11. CLI mistakes: one error line, at once
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["run_dir_file", "run_dir_under_file", "lr_nan", "clip_nan", "clip_inf",
                                  "eps_nan", "best_metric"])
def test_cli_mistakes_fail_at_once_with_one_error_line(tmp_path, capsys, monkeypatch, case):
    afile = tmp_path / "a_file"
    afile.write_text("not a folder")
    run = afile if case == "run_dir_file" else (afile / "sub" if case == "run_dir_under_file" else tmp_path / "run")
    override, key = {"run_dir_file": (None, str(afile)), "run_dir_under_file": (None, str(afile)),
                     "lr_nan": ("optim.lr=nan", "optim.lr"), "clip_nan": ("data.clip_seconds=nan", "data.clip_seconds"),
                     "clip_inf": ("data.clip_seconds=inf", "data.clip_seconds"),
                     "eps_nan": ("optim.eps=nan", "optim.eps"),
                     "best_metric": ("eval.best_metric=foo", "eval.best_metric")}[case]

    def never(*args, **kwargs):
        raise AssertionError("the model was built before the config was checked")

    monkeypatch.setattr(MelAutoencoderFamily, "build_model", never)
    fast = [a for a in FAST if not a.startswith("eval.")] if case == "best_metric" else FAST  # evaluation on
    args = ["mel_autoencoder", f"train.run_dir={run}", *fast, *([override] if override else [])]
    assert train_main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert key in line, line
    assert not (tmp_path / "run").exists()


def test_export_out_at_a_file_is_one_error_line(tmp_path, capsys):
    from course_lib.data.__main__ import main as data_main

    afile = tmp_path / "a_file"
    afile.write_text("not a folder")
    for out in (afile, afile / "below"):
        code = data_main(["export", "--kind", "sound_events", "--out", str(out), "--train", "1", "--valid", "0",
                          "--test", "0", "--clip-seconds", "1"])
        line = one_error_line(capsys.readouterr().err)
        assert code == 2 and "--out" in line and str(afile) in line, line
    assert afile.read_text() == "not a folder"
