"""course_lib.audio: I/O round trips, resampling, the mel front end against librosa, decibels, plots."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from course_lib import audio as A

SR = 16_000


def sine(freq=440.0, seconds=1.0, sr=SR, amp=0.5):
    t = torch.arange(int(seconds * sr)) / sr
    return amp * torch.sin(2 * math.pi * freq * t)


def test_save_load_round_trip_is_16bit_exact(tmp_path):
    wav = sine()[None]
    path = A.save_audio(tmp_path / "a.wav", wav, SR)
    back = A.load_audio(path, sample_rate=SR)
    assert back.shape == (1, SR) and back.dtype == torch.float32
    assert (back - wav).abs().max() <= 1 / 32768 + 1e-7


def test_load_downmixes_stereo_and_resamples(tmp_path):
    stereo = np.stack([sine(1000, sr=48000).numpy(), np.zeros(48000, dtype=np.float32)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 48000)
    wav, rate = A.load_audio_with_rate(tmp_path / "s.wav", sample_rate=SR)
    assert rate == SR and wav.shape == (1, SR)
    spectrum = torch.fft.rfft(wav[0]).abs()
    assert abs(int(spectrum.argmax()) - 1000) <= 1  # 1 Hz bins for a 1 s clip
    assert abs(float(wav.abs().max()) - 0.25) < 0.02  # averaged with a silent channel


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        A.load_audio(tmp_path / "nope.wav")
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="bad.wav"):
        A.load_audio(tmp_path / "bad.wav")
    sf.write(tmp_path / "empty.wav", np.zeros((0,), dtype=np.float32), SR)
    with pytest.raises(ValueError, match="zero length"):
        A.load_audio(tmp_path / "empty.wav")


def test_save_rejects_bad_shapes_and_clips_with_warning(tmp_path):
    with pytest.raises(ValueError, match="channels, time"):
        A.save_audio(tmp_path / "x.wav", torch.zeros(1, 1, 10), SR)
    with pytest.raises(ValueError, match="NaN"):
        A.save_audio(tmp_path / "x.wav", torch.tensor([0.0, float("nan")]), SR)
    with pytest.warns(UserWarning, match="clipping"):
        A.save_audio(tmp_path / "x.wav", torch.tensor([0.0, 2.0]), SR)


def test_resample_keeps_frequency_and_length():
    y = A.resample(sine(440.0), SR, 8000)
    assert y.shape[-1] == 8000
    assert abs(int(torch.fft.rfft(y).abs().argmax()) - 440) <= 1


@pytest.mark.parametrize("n", [1000, 16000, 16001])
def test_num_frames_matches_stft(n):
    spec = A.stft(torch.randn(n), n_fft=1024, hop_length=256)
    assert spec.shape == (513, A.num_frames(n, 256))
    assert A.num_frames(n, 256, center=False, n_fft=1024) == 1 + (n - 1024) // 256
    odd = torch.stft(torch.randn(n), 255, 64, window=torch.hann_window(255), center=True, return_complex=True)
    assert odd.shape[-1] == A.num_frames(n, 64, n_fft=255)


def test_stft_istft_inverse_pair():
    x = torch.randn(2, 8000)
    y = A.istft(A.stft(x, 512, 128), 512, 128, length=8000)
    assert torch.allclose(x, y, atol=1e-5)


def test_mel_matches_librosa():
    librosa = pytest.importorskip("librosa")
    cfg = A.MelConfig(sample_rate=SR, n_fft=1024, hop_length=256, n_mels=80, f_min=20.0, f_max=7600.0, power=2.0)
    x = torch.randn(SR // 2, generator=torch.Generator().manual_seed(0)) * 0.1
    ours = A.mel_spectrogram(x, cfg).numpy()
    ref = librosa.feature.melspectrogram(y=x.numpy(), sr=SR, n_fft=1024, hop_length=256, n_mels=80, fmin=20.0,
                                         fmax=7600.0, power=2.0, center=True, pad_mode="reflect")
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-6 * ref.max())


def test_mel_rejects_too_short_input():
    with pytest.raises(ValueError, match="at least 513"):
        A.mel_spectrogram(torch.zeros(100))


def test_mel_config_validates():
    with pytest.raises(ValueError, match="f_max"):
        A.MelConfig(f_max=9000.0)
    assert A.MelConfig().frame_rate == 62.5


def test_db_closed_forms_and_inverse():
    x = torch.tensor([1.0, 0.1, 1e-3, 0.0])
    db = A.amplitude_to_db(x, top_db=None)
    assert torch.allclose(db, torch.tensor([0.0, -20.0, -60.0, -100.0]), atol=1e-4)  # amin=1e-5 floors 0
    assert torch.allclose(A.amplitude_to_db(x, top_db=40.0).min(), torch.tensor(-40.0))
    assert torch.allclose(A.amplitude_to_db(x ** 2, power=2.0, amin=1e-10, top_db=None)[:3], db[:3], atol=1e-4)
    assert torch.allclose(A.db_to_amplitude(db[:3]), x[:3], rtol=1e-5)
    with pytest.raises(ValueError, match="non-negative"):
        A.amplitude_to_db(torch.tensor([-1.0]))


def test_rms_db_of_full_scale_sine():
    assert abs(A.rms_db(sine(amp=1.0)) - (-3.0103)) < 0.01


def test_plots_have_axes_in_seconds_and_hz():
    import matplotlib

    matplotlib.use("Agg")
    cfg = A.MelConfig()
    mel_db = A.amplitude_to_db(A.mel_spectrogram(sine(), cfg))
    ax = A.plot_spectrogram(mel_db, mel_config=cfg, title="mel")
    assert ax.get_xlabel() == "time (s)" and ax.get_ylabel() == "frequency (Hz)"
    assert abs(ax.get_xlim()[1] - mel_db.shape[-1] * 256 / SR) < 1e-6
    fig = A.plot_spectrograms({"a": mel_db, "b": mel_db}, mel_config=cfg)
    assert len([a for a in fig.axes if a.get_title()]) == 2
    ax = A.plot_waveform(sine())
    assert ax.get_xlabel() == "time (s)"
    with pytest.raises(ValueError, match="freqs, frames"):
        A.plot_spectrogram(torch.zeros(2, 3, 4))


def test_listen_panel_plays_in_lab_and_in_html():
    panel = A.listen_panel({"one": sine(), "two <b>": sine(880)})
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    html = bundle["text/html"]
    assert html.count("<audio") == 2 and "data:audio/wav;base64," in html
    assert "two &lt;b&gt;" in html  # labels are escaped
    n = sine().shape[-1]
    assert html.count(f"({n / A.SAMPLE_RATE:.1f} s, ") == 2 and 'preload="metadata"' in html  # length shown unclicked
    player = A.play(sine())
    assert player.data[:4] == b"RIFF"
    with pytest.raises(ValueError, match="at least one"):
        A.listen_panel({})


def _played(panel) -> list[torch.Tensor]:
    """The audio inside each player of a listen_panel (decoded from its data URL)."""
    import base64
    import io
    import re

    import soundfile as sf

    html = panel._repr_mimebundle_()["text/html"]
    return [torch.from_numpy(sf.read(io.BytesIO(base64.b64decode(b)), dtype="float32")[0])
            for b in re.findall(r'src="data:audio/wav;base64,([^"]+)"', html)]


def test_listen_panel_matches_loudness_flags_near_silent_clips_and_never_clips(capsys):
    """Default ``level="matched"``: a quiet and a loud clip play at one RMS, none above full scale, each label
    giving its gain; a near-silent clip stays at its level, is labelled and named in print; ``level="true"``
    plays the clips as they are and says where ±1 clipped them."""
    loud, quiet, whisper = sine(amp=1.5), sine(880, amp=0.05), sine(300, amp=0.004)
    panel = A.listen_panel({"loud": loud, "quiet": quiet, "whisper": whisper})
    html = panel._repr_mimebundle_()["text/html"]
    a, b, c = _played(panel)
    assert float(a.abs().max()) <= 1.0 and float(b.abs().max()) <= 1.0
    assert abs(A.rms_db(a) - A.rms_db(b)) < 0.2  # equally loud (16-bit rounding aside)
    assert abs(A.peak_db(c) - A.peak_db(whisper)) < 0.2  # the near-silent clip is not raised
    assert "dB to match" in html and "near-silent: peak -48 dBFS" in html
    out = capsys.readouterr().out
    assert "'whisper' is near-silent" in out and "'loud'" not in out
    true = A.listen_panel({"loud": loud, "quiet": quiet}, level="true")
    x, y = _played(true)
    assert float(x.abs().max()) == pytest.approx(1.0, abs=1e-3) and abs(A.peak_db(y) - A.peak_db(quiet)) < 0.2
    assert "clipped at ±1" in true._repr_mimebundle_()["text/html"]
    with pytest.raises(ValueError, match="level must be one of"):
        A.listen_panel({"a": quiet}, level="loud")


def test_loudness_matched_gives_one_rms_and_never_clips():
    quiet = 0.01 * torch.sin(torch.linspace(0, 200, 4000))
    spiky = torch.zeros(4000)
    spiky[::400] = 0.9  # a low RMS with high peaks: matching its RMS alone would clip it
    out = A.loudness_matched({"quiet": quiet, "spiky": spiky, "silent": torch.zeros(10)}, target_db=-20.0)
    assert abs(A.rms_db(out["quiet"]) - A.rms_db(out["spiky"])) < 1e-3  # equally loud ...
    assert float(out["spiky"].abs().max()) == pytest.approx(0.99, rel=1e-5)  # ... lowered together to fit
    assert A.rms_db(out["quiet"]) < -20.0 and not out["silent"].any()
    alone = A.loudness_matched({"quiet": quiet})
    assert A.rms_db(alone["quiet"]) == pytest.approx(-20.0, abs=1e-3)  # room to spare: exactly the target
