"""EnCodec (``transformers.EncodecModel``) → course :class:`Codec`: the converted codec gives the same codes
(exact integers) and the same latents and audio (float rounding) as EnCodec, on tiny random models of the
24 kHz kind (causal, reflect padding, 1×1 shortcuts) and of the 48 kHz kind (non-causal, time group norm,
stereo), at two bandwidths; a saved folder converts the same way offline; a dropped, swapped or transposed
tensor is caught; what the course cannot represent is refused by name; the real 24 kHz architecture has
exactly EnCodec's parameter count. Random weights only: no download."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from transformers import EncodecConfig, EncodecModel  # noqa: E402

from course_lib.codecs import Codec, CodecConfig, codec_from_encodec  # noqa: E402
from course_lib.codecs.encodec_hf import (  # noqa: E402
    codec_config_from_encodec,
    encodec_n_q,
    encodec_state_dict_to_course,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# hop 8 at 16 kHz: 2000 frames/s × log2(32) = 10 kbps per codebook; 40 kbps → 4 codebooks, 20 → 2, 10 → 1.
TINY = dict(sampling_rate=16_000, num_filters=4, hidden_size=8, upsampling_ratios=[4, 2], codebook_size=32,
            target_bandwidths=[10.0, 20.0, 40.0], num_residual_layers=2, kernel_size=7, last_kernel_size=5)
BANDWIDTHS = (20.0, 40.0)
KINDS = {
    # EnCodec 24 kHz's kind: causal, reflect padding, conv shortcuts, weight norm, mono, no renormalisation
    "24k": dict(TINY),
    "24k-trim-half": dict(TINY, trim_right_ratio=0.5),
    "24k-zero-pad-identity-skip": dict(TINY, pad_mode="constant", use_conv_shortcut=False),
    # EnCodec 48 kHz's network: non-causal, time group norm, stereo (its renormalisation/chunking: see below)
    "48k-network": dict(TINY, audio_channels=2, use_causal_conv=False, norm_type="time_group_norm"),
}
LENGTH = 203  # not a multiple of the hop: exercises EnCodec's per-convolution padding


def clip(channels: int = 1, length: int = LENGTH, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 16_000
    tone = 0.3 * torch.sin(2 * math.pi * 440 * t)
    return (tone + 0.1 * torch.randn(2, channels, length, generator=gen)).float()


def fill_codebooks(hf: EncodecModel, x: torch.Tensor, seed: int = 0) -> None:
    """EnCodec initialises its codebooks to zeros; put each stage's entries near its residuals instead (as a
    k-means init would), so the codes are varied and the nearest-code search is really tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        residual = hf.encoder(x)
        for layer in hf.quantizer.layers:
            frames = residual.transpose(1, 2).reshape(-1, residual.shape[1])
            picks = frames[torch.randint(0, frames.shape[0], (hf.config.codebook_size,), generator=gen)]
            embed = picks + 0.1 * frames.std() * torch.randn(picks.shape, generator=gen)
            layer.codebook.embed.copy_(embed)
            residual = residual - layer.decode(layer.encode(residual))


def tiny_encodec(seed: int = 0, **config) -> tuple[EncodecModel, torch.Tensor]:
    torch.manual_seed(seed)
    hf = EncodecModel(EncodecConfig(**config)).eval()
    x = clip(hf.config.audio_channels, seed=seed)
    fill_codebooks(hf, x, seed)
    return hf, x


def assert_equivalent(hf: EncodecModel, codec: Codec, x: torch.Tensor, bandwidths=BANDWIDTHS) -> None:
    """Encoder latents, codes (exact), quantizer vectors, decoded audio and the full forward pass agree."""
    with torch.no_grad():
        torch.testing.assert_close(codec.encode_latent(x), hf.encoder(x), atol=1e-5, rtol=0)
        for bandwidth in bandwidths:
            n_q = encodec_n_q(hf.config, bandwidth)
            out = hf.encode(x, bandwidth=bandwidth)
            hf_codes = out.audio_codes[0]  # (B, K, F): one chunk
            codes = codec.encode(x, n_q=n_q)
            assert codes.shape == hf_codes.shape == (x.shape[0], n_q, math.ceil(x.shape[-1] / codec.hop_length))
            assert torch.equal(codes, hf_codes), f"codes differ at {bandwidth} kbps"
            torch.testing.assert_close(codec.quantizer.decode(codes), hf.quantizer.decode(hf_codes.transpose(0, 1)),
                                       atol=1e-5, rtol=0)
            audio = hf.decode(out.audio_codes, out.audio_scales).audio_values
            torch.testing.assert_close(codec.decode(codes), audio, atol=1e-5, rtol=0)
            torch.testing.assert_close(codec(x, n_q=n_q)[0], hf(x, bandwidth=bandwidth).audio_values,
                                       atol=1e-5, rtol=0)


# ---- equivalence -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_converted_codec_matches_encodec(kind):
    hf, x = tiny_encodec(**KINDS[kind])
    codec = codec_from_encodec(hf)
    assert not codec.training
    config = codec.config
    assert (config.causal, config.pad_mode, config.true_skip, config.norm, config.channels) == (
        hf.config.use_causal_conv, hf.config.pad_mode, not hf.config.use_conv_shortcut, hf.config.norm_type,
        hf.config.audio_channels)
    assert config.trim_right_ratio == hf.config.trim_right_ratio and config.n_q == 4 and not config.pad_input
    codes = codec.encode(x)
    assert all(codes[:, i].unique().numel() > 3 for i in range(config.n_q)), "the codes should be varied"
    assert_equivalent(hf, codec, x)
    assert_equivalent(hf, codec, clip(hf.config.audio_channels, length=8 * 17, seed=1))  # a multiple of the hop


def test_bandwidth_to_codebooks():
    real = EncodecConfig()  # 24 kHz: 75 frames/s × 10 bits = 750 bps per codebook
    assert [encodec_n_q(real, b) for b in (1.5, 3.0, 6.0, 12.0, 24.0)] == [2, 4, 8, 16, 32]
    assert [encodec_n_q(EncodecConfig(**TINY), b) for b in (10.0, 20.0, 40.0)] == [1, 2, 4]
    with pytest.raises(ValueError, match="target_bandwidths"):
        encodec_n_q(real, 5.0)


def test_save_pretrained_folder_round_trip_offline(tmp_path):
    hf, x = tiny_encodec(seed=3, **KINDS["24k"])
    with torch.no_grad():  # a trained-looking EMA state, which must be carried over as it is
        for layer in hf.quantizer.layers:
            layer.codebook.cluster_size.uniform_(0.5, 3.0)
            layer.codebook.embed_avg.copy_(layer.codebook.embed * layer.codebook.cluster_size[:, None])
    hf.save_pretrained(tmp_path / "encodec")
    codec = codec_from_encodec(tmp_path / "encodec", local_files_only=True)
    assert_equivalent(hf, codec, x)
    stage = codec.quantizer.layers[1]
    assert torch.equal(stage.cluster_size, hf.quantizer.layers[1].codebook.cluster_size)
    assert torch.equal(stage.embed_avg, hf.quantizer.layers[1].codebook.embed_avg) and bool(stage.initialized)
    # and through the course's own format, whose config.json now carries the EnCodec options
    again = Codec.from_pretrained(codec.save_pretrained(tmp_path / "course"))
    assert again.config == codec.config
    assert_equivalent(hf, again, x)


def test_never_trained_codebooks_get_the_course_ema_start():
    hf, _ = tiny_encodec(**KINDS["24k"])  # cluster_size all zeros: EnCodec's init
    stage = codec_from_encodec(hf).quantizer.layers[0]
    assert torch.equal(stage.cluster_size, torch.ones(32)) and torch.equal(stage.embed_avg, stage.embedding)
    assert bool(stage.initialized)  # no k-means re-init would overwrite the loaded codebook in training


def test_plain_and_legacy_weight_norm_tensors_convert_too():
    hf, x = tiny_encodec(**KINDS["24k"])
    plain, _ = tiny_encodec(**KINDS["24k"])  # the same model (a deepcopy would share the parametrised classes)
    for module in plain.modules():
        if torch.nn.utils.parametrize.is_parametrized(module, "weight"):
            torch.nn.utils.parametrize.remove_parametrizations(module, "weight")
    assert not any("parametrizations" in k for k in plain.state_dict())
    assert_equivalent(plain, codec_from_encodec(plain), x)
    # the older weight_g / weight_v names of torch.nn.utils.weight_norm
    codec = codec_from_encodec(hf)
    legacy = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v for k, v in hf.state_dict().items()}
    assert any(k.endswith("weight_g") for k in legacy)
    codec.load_state_dict(encodec_state_dict_to_course(legacy, codec))
    assert_equivalent(hf, codec, x)


def test_converting_leaves_the_global_seed_stream_alone():
    hf, _ = tiny_encodec(**KINDS["24k"])
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    codec_from_encodec(hf)
    assert torch.equal(torch.rand(3), expected)


# ---- the check catches a bad conversion ------------------------------------------------------------------


def _swap(sd, a, b):
    sd[a], sd[b] = sd[b].clone(), sd[a].clone()


CORRUPTIONS = {
    # encoder.model: conv, (2 residual units, ELU, strided conv) × 2 ratios, then the LSTM at index 9
    "lstm input/hidden weights swapped": lambda sd: _swap(sd, "encoder.model.9.lstm.weight_ih_l0",
                                                          "encoder.model.9.lstm.weight_hh_l0"),
    "shortcut 1x1 conv transposed": lambda sd: sd.__setitem__(
        "decoder.model.4.shortcut.conv.parametrizations.weight.original1",
        sd["decoder.model.4.shortcut.conv.parametrizations.weight.original1"].transpose(0, 1).clone()),
    "codebooks of stages 0 and 1 swapped": lambda sd: _swap(sd, "quantizer.layers.0.embedding",
                                                           "quantizer.layers.1.embedding"),
    "weight-norm magnitude of the first conv perturbed": lambda sd: sd.__setitem__(
        "encoder.model.0.conv.parametrizations.weight.original0",
        sd["encoder.model.0.conv.parametrizations.weight.original0"] * 1.01),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_equivalence_check_catches_a_misplaced_tensor(corruption):
    hf, x = tiny_encodec(**KINDS["24k"])
    codec = codec_from_encodec(hf)
    state = encodec_state_dict_to_course(hf.state_dict(), codec)
    CORRUPTIONS[corruption](state)
    codec.load_state_dict(state)
    with pytest.raises(AssertionError):
        assert_equivalent(hf, codec, x)


def test_converter_refuses_dropped_extra_or_misshapen_tensors():
    hf, _ = tiny_encodec(**KINDS["24k"])
    codec = Codec(codec_config_from_encodec(hf.config))
    state = dict(hf.state_dict())
    assert set(encodec_state_dict_to_course(state, codec)) == set(codec.state_dict())

    dropped = {k: v for k, v in state.items() if k != "decoder.layers.3.conv.bias"}  # the first convtr
    with pytest.raises(ValueError, match=r"no EnCodec tensor .*decoder\.model\.3\.convtr\.bias"):
        encodec_state_dict_to_course(dropped, codec)
    with pytest.raises(ValueError, match=r"no place .*encoder\.layers\.99\.conv\.bias"):
        encodec_state_dict_to_course({**state, "encoder.layers.99.conv.bias": torch.zeros(1)}, codec)
    key = "encoder.layers.1.block.1.conv.parametrizations.weight.original1"  # (2, 4, 3): not square
    with pytest.raises(ValueError, match="has shape"):
        encodec_state_dict_to_course({**state, key: state[key].transpose(0, 1)}, codec)


# ---- what the course cannot represent --------------------------------------------------------------------

WRAPPED_48K = dict(KINDS["48k-network"], normalize=True, chunk_length_s=0.05, overlap=0.01)


@pytest.mark.parametrize(("change", "named"), [
    (dict(normalize=True), "normalize=True"),
    (dict(chunk_length_s=1.0, overlap=0.01), "chunk_length_s=1.0"),
    (dict(codebook_dim=4), "codebook_dim=4"),
    (dict(use_causal_conv=False, trim_right_ratio=0.5), "trim_right_ratio=0.5"),
])
def test_unrepresentable_options_are_refused_by_name(change, named):
    with pytest.raises(ValueError, match=f"EncodecConfig.{named}"):
        codec_config_from_encodec(EncodecConfig(**{**TINY, **change}))


def test_unknown_padding_or_norm_is_refused_by_name():
    for key, value in (("pad_mode", "mirror"), ("norm_type", "layer_norm")):
        config = dict(EncodecConfig(**TINY).to_dict(), **{key: value})
        config.pop("codebook_dim", None)
        with pytest.raises(ValueError, match=f"EncodecConfig.{key}='{value}'"):
            codec_config_from_encodec(_Attrs(config))


class _Attrs:  # an EncodecConfig-like object without transformers' own validation of these values
    def __init__(self, values):
        self.__dict__.update(values)
        self.num_quantizers = EncodecConfig(**TINY).num_quantizers


def test_48k_renormalisation_network_only_is_the_scaled_codec():
    """``normalize``/chunking are refused by default; ``network_only=True`` converts the networks, and then
    EnCodec's codes of a one-chunk clip are the course codec's codes of the clip divided by EnCodec's scale."""
    hf, x = tiny_encodec(**WRAPPED_48K)
    with pytest.raises(ValueError, match="EncodecConfig.normalize=True"):
        codec_from_encodec(hf)
    codec = codec_from_encodec(hf, network_only=True)
    with torch.no_grad():
        for bandwidth in BANDWIDTHS:
            out = hf.encode(x, bandwidth=bandwidth)
            assert out.audio_codes.shape[0] == 1  # the clip is shorter than one chunk
            scale = out.audio_scales[0].view(-1, 1, 1)
            codes = codec.encode(x / scale, n_q=encodec_n_q(hf.config, bandwidth))
            assert torch.equal(codes, out.audio_codes[0])
            audio = hf.decode(out.audio_codes, out.audio_scales).audio_values
            torch.testing.assert_close(codec.decode(codes) * scale, audio, atol=1e-5, rtol=1e-5)


# ---- the real 24 kHz architecture, and the course's own codec unchanged -------------------------------------


def test_real_24khz_parameter_count_and_outputs_match():
    torch.manual_seed(0)
    hf = EncodecModel(EncodecConfig()).eval()  # random weights, EnCodec 24 kHz's architecture
    x = clip(length=640)
    fill_codebooks(hf, x)
    codec = codec_from_encodec(hf)
    count = sum(p.numel() for p in codec.parameters())
    assert count == sum(p.numel() for p in hf.parameters()) == 14_851_810
    assert codec.config.n_q == 32 and codec.frame_rate == 75.0 and codec.bitrate(8) == 6000.0
    assert_equivalent(hf, codec, x, bandwidths=(1.5, 6.0))


def test_real_48khz_network_parameter_count_matches():
    real48 = EncodecConfig(sampling_rate=48_000, audio_channels=2, normalize=True, chunk_length_s=1.0, overlap=0.01,
                           norm_type="time_group_norm", use_causal_conv=False,
                           target_bandwidths=[3.0, 6.0, 12.0, 24.0])  # facebook/encodec_48khz's config
    torch.manual_seed(0)
    hf = EncodecModel(real48)
    codec = codec_from_encodec(hf, network_only=True)
    assert sum(p.numel() for p in codec.parameters()) == sum(p.numel() for p in hf.parameters()) == 14_856_294
    assert codec.config.n_q == 16 and codec.config.norm == "time_group_norm" and not codec.config.causal


def test_course_codec_defaults_and_shipped_config_unchanged():
    shipped = Path(__file__).resolve().parents[1] / "course_lib" / "pretrained" / "codec_course" / "config.json"
    config = CodecConfig.from_dict(json.loads(shipped.read_text()))  # written before the EnCodec options existed
    options = (config.true_skip, config.pad_mode, config.trim_right_ratio, config.pad_input)
    assert options == (True, "constant", 1.0, True)
    keys = Codec(CodecConfig(n_filters=2, dimension=8, lstm=1, n_q=2, codebook_size=16)).state_dict()
    assert not any("shortcut" in k or ".norm." in k for k in keys)
