"""Export to disk, loading back (course layout, csv/jsonl corpora, parquet through datasets), torch datasets."""

from __future__ import annotations

import csv
import io
import json
import sys
import types
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from course_lib.data.clip import Clip
from course_lib.data.export import export_clips, export_course_dataset
from course_lib.data.loaders import load_captioned, scan_captioned, split_aliases
from course_lib.data.torch_dataset import (
    CaptionedAudioDataset,
    GeneratedDataset,
    collate_captioned,
    crop_offset,
)

SR = 16_000
QUANT = 1 / 32768 + 1e-7  # one 16-bit step: what a PCM_16 round trip may cost


def tone(freq: float, seconds: float = 0.25, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_clips(split: str, n: int = 3) -> list[Clip]:
    """Sines with captions and attributes of different keys and types (NumPy scalars, lists, nesting)."""
    clips = []
    for i in range(n):
        attrs = {"class": "tone", "pitch_hz": 220.0 * (i + 1), "count": np.int64(i)}
        if i % 2:
            attrs = {"class": "beep", "tags": ["short", "high"], "nested": {"db": -12.5}}
        noise = np.random.default_rng(i).uniform(-0.3, 0.3, SR // 4).astype(np.float32)
        clips.append(Clip(tone(220.0 * (i + 1)) + noise, SR, f"{split}: a tone number {i} ü", attrs, f"{split}-{i}"))
    return clips


def write_table(path, rows: list[dict]) -> None:
    if path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    clips = {split: make_clips(split, 3) for split in ("train", "valid")}
    for split, items in clips.items():
        export_clips(iter(items), root, split)
    return root, clips


# ------------------------------------------------------------------------------------------ export / load


def test_round_trip_is_exact_up_to_16_bit(exported):
    root, clips = exported
    for split, originals in clips.items():
        loaded = load_captioned(root, split)
        assert [c.id for c in loaded] == [c.id for c in originals]
        for a, b in zip(originals, loaded):
            assert b.caption == a.caption
            assert b.attributes == json.loads(json.dumps(a.attributes, default=lambda v: v.item()))
            assert b.sample_rate == SR and b.audio.dtype == np.float32 and b.audio.shape == a.audio.shape
            assert np.abs(b.audio - a.audio).max() <= QUANT
    assert loaded[1].attributes["nested"] == {"db": -12.5} and loaded[0].attributes["count"] == 0


def test_metadata_is_one_schema_with_json_attributes(exported):
    root, _ = exported
    rows = [json.loads(line) for line in (root / "train" / "metadata.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in rows] == [["attributes", "file_name", "id", "text"]] * 3
    assert all(isinstance(r["attributes"], str) for r in rows)
    assert all((root / "train" / r["file_name"]).is_file() for r in rows)
    assert sf.info(str(root / "train" / rows[0]["file_name"])).subtype == "PCM_16"


def test_streaming_and_split_aliases(exported):
    root, clips = exported
    streamed = load_captioned(root, "validation", streaming=True)
    assert not isinstance(streamed, list)
    assert [c.caption for c in streamed] == [c.caption for c in clips["valid"]]
    assert split_aliases("valid")[:2] == ("valid", "validation")
    with pytest.raises(FileNotFoundError, match=r"no split 'test'.*\['train', 'valid'\]"):
        load_captioned(root, "test")


def test_datasets_audiofolder_sees_splits_and_text_offline(exported, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    # Streaming: listing splits and columns needs no decoder (decoding rows needs torchcodec, absent here).
    dd = datasets.load_dataset("audiofolder", data_dir=str(exported[0]), streaming=True)
    assert set(dd) == {"train", "validation"}  # datasets calls the "valid" folder "validation"
    assert {"audio", "text", "id", "attributes"} <= set(dd["train"].features)
    assert isinstance(dd["train"].features["audio"], datasets.Audio)


def test_audiofolder_decodes_when_torchcodec_is_installed(exported, tmp_path):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("torchcodec", reason="datasets decodes Audio only through torchcodec")
    ds = datasets.load_dataset("audiofolder", data_dir=str(exported[0]), split="train", cache_dir=str(tmp_path))
    assert ds[0]["text"] == exported[1]["train"][0].caption


# ------------------------------------------------------------------------------------------ other corpora


def test_stereo_48k_is_downmixed_and_resampled(tmp_path):
    sr_in, freq = 48_000, 1000.0
    left, right = tone(freq, 1.0, sr_in, 0.6), tone(freq, 1.0, sr_in, 0.2)
    sf.write(str(tmp_path / "st.wav"), np.stack([left, right], axis=1), sr_in, subtype="FLOAT")
    write_table(tmp_path / "meta.jsonl", [{"path": "st.wav", "caption": "a 1 kHz tone in stereo"}])
    (clip,) = load_captioned(tmp_path / "meta.jsonl", sample_rate=SR)
    assert clip.sample_rate == SR and clip.audio.shape == (SR,)  # 1 s at 16 kHz
    spectrum = np.abs(np.fft.rfft(clip.audio))
    assert np.fft.rfftfreq(SR, 1 / SR)[spectrum.argmax()] == pytest.approx(freq, abs=1.0)
    middle = clip.audio[1000:-1000]  # the mean of the channels: amplitude 0.4, not 0.6 (left) or 0.8 (sum)
    assert np.abs(middle).max() == pytest.approx(0.4, abs=0.01)


def test_clotho_style_csv_with_audio_root(tmp_path):
    audio_dir = tmp_path / "development"
    audio_dir.mkdir()
    rows = []
    for i in range(2):
        sf.write(str(audio_dir / f"Rain {i}.wav"), tone(300 + 100 * i), SR)
        rows.append({"file_name": f"Rain {i}.wav", **{f"caption_{k}": f"caption {k} of clip {i}" for k in range(1, 6)}})
    write_table(tmp_path / "clotho_captions_development.csv", rows)
    clips = load_captioned(tmp_path / "clotho_captions_development.csv", audio_root=audio_dir)
    assert [c.caption for c in clips] == ["caption 1 of clip 0", "caption 1 of clip 1"]
    assert [c.id for c in clips] == ["Rain 0", "Rain 1"]
    assert clips[1].attributes["caption_5"] == "caption 5 of clip 1"  # the other captions are kept
    third = load_captioned(tmp_path / "clotho_captions_development.csv", audio_root=audio_dir,
                           text_column="caption_3")
    assert third[0].caption == "caption 3 of clip 0"
    with pytest.raises(ValueError, match=r"text_column='summary'.*\['file_name', 'caption_1'"):
        load_captioned(tmp_path / "clotho_captions_development.csv", audio_root=audio_dir, text_column="summary")


def test_unknown_columns_are_named(tmp_path):
    sf.write(str(tmp_path / "a.wav"), tone(440), SR)
    write_table(tmp_path / "m.csv", [{"youtube_id": "a", "label": "x"}])
    with pytest.raises(ValueError, match=r"audio path.*\['youtube_id', 'label'\].*audio_column="):
        load_captioned(tmp_path / "m.csv")
    (clip,) = load_captioned(tmp_path / "m.csv", audio_column="youtube_id", text_column="label")  # a.wav found
    assert clip.caption == "x" and clip.audio.shape == (SR // 4,)


def test_parquet_with_embedded_audio_goes_through_load_dataset(tmp_path):
    """The hub code path (datasets.load_dataset + Audio(decode=False)) on a local parquet snapshot."""
    datasets = pytest.importorskip("datasets")
    buf = io.BytesIO()
    sf.write(buf, tone(440.0, 0.5, 22_050), 22_050, format="WAV", subtype="PCM_16")
    ds = datasets.Dataset.from_dict({"audio": [{"bytes": buf.getvalue(), "path": "x.wav"}], "caption": ["a tone"]})
    ds = ds.cast_column("audio", datasets.Audio())  # what a hub dataset declares
    ds.to_parquet(str(tmp_path / "validation-00000-of-00001.parquet"))
    (clip,) = load_captioned(tmp_path, split="valid")
    assert clip.caption == "a tone" and clip.id == "x" and clip.audio.shape == (SR // 2,)


def test_root_metadata_with_split_folders_and_flat_folders(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        sf.write(str(tmp_path / split / "a.wav"), tone(440), SR)
    write_table(tmp_path / "metadata.csv", [{"file_name": "train/a.wav", "text": "train clip"},
                                            {"file_name": "test/a.wav", "text": "test clip"}])
    assert [c.caption for c in load_captioned(tmp_path, "test")] == ["test clip"]
    flat = tmp_path / "flat"
    flat.mkdir()
    sf.write(str(flat / "a.wav"), tone(440), SR)
    write_table(flat / "metadata.jsonl", [{"file_name": "a.wav", "text": "flat clip"}])
    assert [c.caption for c in load_captioned(flat)] == ["flat clip"]  # a flat folder is the train split
    with pytest.raises(FileNotFoundError, match="one split"):
        load_captioned(flat, "valid")


# ------------------------------------------------------------------------------------------ error cases


@pytest.fixture()
def folder(tmp_path):
    split = tmp_path / "train"
    split.mkdir()
    for name in ("a", "b", "c"):
        sf.write(str(split / f"{name}.wav"), tone(440), SR)
    return tmp_path


def rows(*names, **override):
    return [{"file_name": f"{n}.wav", "text": f"clip {n}", **override.get(n, {})} for n in names]


def test_missing_audio_file_is_named(folder):
    write_table(folder / "train" / "metadata.jsonl", rows("a", "gone"))
    with pytest.raises(FileNotFoundError, match=r"gone\.wav \(row 1 of .*metadata\.jsonl\)"):
        load_captioned(folder)


def test_unreadable_audio_file_is_named(folder):
    (folder / "train" / "bad.wav").write_bytes(b"this is not audio" * 10)
    write_table(folder / "train" / "metadata.jsonl", rows("a", "bad"))
    with pytest.raises(ValueError, match=r"could not read audio file .*bad\.wav \(row 1"):
        load_captioned(folder)


def test_malformed_metadata_is_named(folder):
    (folder / "train" / "metadata.jsonl").write_text('{"file_name": "a.wav", "text": "x"}\n{"file_name": "b.wav", \n')
    with pytest.raises(ValueError, match=r"could not read the metadata of .*metadata\.jsonl"):
        load_captioned(folder)


@pytest.mark.parametrize("text", [None, "", "   "])
def test_row_without_text_is_named(folder, text):
    write_table(folder / "train" / "metadata.jsonl", rows("a", "b", b={"text": text}))
    with pytest.raises(ValueError, match=r"row 1 .*b\.wav.*no text in column 'text'"):
        load_captioned(folder)


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no captioned data in .*metadata\.jsonl"):
        load_captioned(tmp_path)
    sf.write(str(tmp_path / "lonely.wav"), tone(440), SR)
    with pytest.raises(FileNotFoundError, match=r"lonely\.wav.*but no captions"):
        load_captioned(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such local folder or file"):
        load_captioned(tmp_path / "nope")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv is empty"):
        load_captioned(tmp_path / "empty.csv")


def test_zero_length_clips_are_skipped_with_a_warning(folder):
    for name in ("z1", "z2"):
        sf.write(str(folder / "train" / f"{name}.wav"), np.zeros(0, np.float32), SR)
    write_table(folder / "train" / "metadata.jsonl", rows("a", "z1", "b", "z2"))
    with pytest.warns(UserWarning, match=r"skipped 2 zero-length clip\(s\).*z1\.wav.*z2\.wav"):
        clips = load_captioned(folder)
    assert [c.id for c in clips] == ["a", "b"]
    write_table(folder / "train" / "metadata.jsonl", rows("z1"))
    with pytest.raises(ValueError, match="all 1 clips are zero-length"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_captioned(folder)


def test_export_rejects_bad_clips(tmp_path):
    good = Clip(tone(440), SR, "a tone", {}, "x")
    cases = [
        (Clip(np.zeros(0, np.float32), SR, "silence", {}, "z"), "id 'z'.*zero length"),
        (Clip(tone(440), SR, "  ", {}, "c"), "id 'c'.*caption is empty"),
        (Clip(tone(440), SR, "a tone", {"f": object()}, "o"), "id 'o'.*not JSON-serialisable"),
        (Clip(np.stack([tone(440)] * 2), SR, "stereo", {}, "s"), r"id 's'.*mono \(time,\)"),
        (Clip(tone(440), SR, "dup", {}, "x"), "already used by id 'x'"),
    ]
    for i, (bad, message) in enumerate(cases):
        with pytest.raises(ValueError, match=message):
            export_clips([good, bad], tmp_path / str(i), "train")
        assert not (tmp_path / str(i) / "train" / "metadata.jsonl").exists()  # never a half-written split
    export_clips([good], tmp_path / "ok", "train")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_clips([good], tmp_path / "ok", "train")
    export_clips([Clip(tone(880), SR, "another tone", {}, "y")], tmp_path / "ok", "train", overwrite=True)
    # the old export's x.wav is gone; .course_export.json records what the course wrote (all overwrite may delete)
    assert sorted(p.name for p in (tmp_path / "ok" / "train").iterdir()) == [".course_export.json", "metadata.jsonl",
                                                                             "y.wav"]


# ------------------------------------------------------------------------------------------ torch datasets


def test_crops_are_deterministic_per_seed_epoch_and_index():
    clips = [Clip(np.arange(1000, dtype=np.float32) / 1000, SR, f"ramp {i}", {"i": i}, f"r{i}") for i in range(8)]
    ds = CaptionedAudioDataset(clips, segment_samples=100, seed=3)
    first = [ds[i]["audio"] for i in range(8)]
    for i, audio in enumerate(first):  # the crop is a contiguous window of the ramp
        assert audio.shape == (1, 100) and audio.dtype == torch.float32
        start = int(round(float(audio[0, 0]) * 1000))
        assert start == crop_offset(1000, 100, i, seed=3, epoch=0)
        assert torch.allclose(audio[0], torch.arange(start, start + 100, dtype=torch.float32) / 1000)
    again = CaptionedAudioDataset(clips, segment_samples=100, seed=3)
    assert all(torch.equal(again[i]["audio"], first[i]) for i in reversed(range(8)))  # order does not matter
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i]["audio"], first[i]) for i in range(8))
    ds.set_epoch(0)
    assert all(torch.equal(ds[i]["audio"], first[i]) for i in range(8))  # exact resume
    fixed = CaptionedAudioDataset(clips, segment_samples=100, random_crop=False)
    assert float(fixed[5]["audio"][0, 0]) == 0.0


def test_short_clips_are_zero_padded_and_collated():
    clips = [Clip(np.ones(50 + 100 * i, np.float32), SR, f"c{i}", {"n": i}, f"id{i}") for i in range(3)]
    ds = CaptionedAudioDataset(clips, segment_samples=120)
    item = ds[0]
    assert set(item) == {"audio", "caption", "attributes", "id"}
    assert item["audio"].shape == (1, 120) and item["audio"][0, :50].eq(1).all() and item["audio"][0, 50:].eq(0).all()
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_captioned)
    batch = next(iter(loader))
    assert batch["audio"].shape == (3, 1, 120) and batch["audio"].dtype == torch.float32
    assert batch["caption"] == ["c0", "c1", "c2"] and batch["id"] == ["id0", "id1", "id2"]
    assert batch["attributes"] == [{"n": 0}, {"n": 1}, {"n": 2}]
    whole = CaptionedAudioDataset(clips)
    with pytest.raises(ValueError, match="segment_samples"):
        collate_captioned([whole[0], whole[1]])
    with pytest.raises(IndexError, match="out of range"):
        ds[3]


def test_dataset_over_a_source_decodes_lazily(exported):
    root, clips = exported
    ds = CaptionedAudioDataset(root, segment_samples=SR, split="valid", random_crop=False)
    assert len(ds) == 3
    item = ds[2]
    original = clips["valid"][2]
    assert item["caption"] == original.caption and item["id"] == original.id
    n = len(original.audio)
    assert np.abs(item["audio"][0, :n].numpy() - original.audio).max() <= QUANT
    assert item["audio"][0, n:].abs().max() == 0  # padded to one second


def fake_generator_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    def generate_clips(split, n, clip_seconds=4.0, sample_rate=16000, start=0):
        for i in range(start, start + n):
            freq = 200.0 + 10 * i + (5 if split == "valid" else 0)
            yield Clip(tone(freq, clip_seconds, sample_rate), sample_rate, f"a {freq:g} Hz tone",
                       {"pitch_hz": freq}, f"{split}-{i:06d}")

    module.generate_clips = generate_clips
    return module


@pytest.fixture()
def fake_generators(monkeypatch):
    for kind in ("sound_events", "music"):
        name = f"course_lib.data.{kind}"
        monkeypatch.setitem(sys.modules, name, fake_generator_module(name))


def test_generated_dataset_by_index(fake_generators):
    ds = GeneratedDataset("music", "valid", size=5, clip_seconds=0.5, sample_rate=8000)
    assert len(ds) == 5
    item = ds[3]
    assert item["audio"].shape == (1, 4000) and item["id"] == "valid-000003"
    assert item["attributes"] == {"pitch_hz": 235.0}
    assert torch.equal(ds[3]["audio"], item["audio"])
    with pytest.raises(ValueError, match="unknown course dataset kind 'speech'"):
        GeneratedDataset("speech", "train", size=2)


def test_cli_exports_a_course_dataset(fake_generators, tmp_path):
    from course_lib.data.__main__ import main

    out = tmp_path / "se"
    args = ["export", "--kind", "sound_events", "--out", str(out), "--train", "3", "--valid", "2", "--test", "0",
            "--clip-seconds", "0.25"]
    assert main(args) == 0
    card = json.loads((out / "course_dataset.json").read_text())
    assert card["sizes"] == {"train": 3, "valid": 2} and card["kind"] == "sound_events"
    valid = load_captioned(out, "valid")
    assert [c.caption for c in valid] == ["a 205 Hz tone", "a 215 Hz tone"]
    assert main(args) == 1  # exists already: a clear error, not a traceback
    assert main([*args, "--overwrite"]) == 0
    with pytest.raises(ValueError, match="positive int"):
        export_course_dataset("music", out, {"train": 0})


def test_real_generator_round_trip(tmp_path):
    pytest.importorskip("course_lib.data.sound_events", reason="generator not written yet")
    export_course_dataset("sound_events", tmp_path, {"train": 2}, clip_seconds=1.0)
    clips = scan_captioned(tmp_path, "train")
    assert len(clips) == 2 and all(r.num_frames == SR and r.caption for r in clips)
