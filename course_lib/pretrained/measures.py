"""How each shipped model's card metrics are measured (and re-measured by the tests).

Every measurement uses test-split clips from the course generators: never seen in training (train split)
nor in the training run's periodic evaluation (valid split). Half sound events, half music.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from course_lib.data import music, sound_events

DB_PER_NAT = 20.0 / math.log(10.0)  # a log-magnitude difference of 1 nat is 8.69 dB


def heldout_audio(n_clips: int, clip_seconds: float, sample_rate: int, start: int = 0) -> torch.Tensor:
    """``(n_clips, 1, T)`` test-split clips: the first half sound events, the second half music."""
    n_music = n_clips // 2
    clips = list(sound_events.generate_clips("test", n_clips - n_music, clip_seconds, sample_rate, start=start))
    clips += list(music.generate_clips("test", n_music, clip_seconds, sample_rate, start=start))
    return torch.from_numpy(np.stack([c.audio for c in clips]))[:, None]


@torch.no_grad()
def measure_mel_vqvae(model, n_clips: int = 24, clip_seconds: float = 4.0, batch_size: int = 8,
                      probes: dict | None = None) -> dict[str, float]:
    """Mel VQ-VAE: held-out log-mel L1 (nats and dB), codebook usage and perplexity over all tokens.

    With ``probes`` (keyword arguments of :func:`measure_tokenizer_probes`, e.g. ``{"n_clips": 48, "versions":
    [2]}``): the course's probes on real test clips turned into a log-mel, through the VQ-VAE, and back to audio by
    the shipped ``vocos_course`` (``v2_vocos_…``) and by Griffin-Lim (``v2_griffin_lim_…``): what Diffsound's
    tokens can carry at best."""
    from course_lib.quantize import perplexity

    cfg = model.config
    audio = heldout_audio(n_clips, clip_seconds, cfg.sample_rate)
    l1, codes = [], []
    for batch in audio.split(batch_size):
        mel = model.features(batch[:, 0])
        recon, vq = model(mel)
        l1.append((recon - mel).abs().mean(dim=(1, 2)))
        codes.append(vq.codes.flatten())
    l1_nats = float(torch.cat(l1).mean())
    tokens = torch.cat(codes)
    metrics = {
        "mel_l1_nats": round(l1_nats, 4),
        "mel_l1_db": round(l1_nats * DB_PER_NAT, 3),
        "codebook_usage": round(tokens.unique().numel() / cfg.codebook_size, 4),
        "perplexity": round(float(perplexity(tokens, cfg.codebook_size)), 2),
    }
    if probes is not None:
        metrics.update(measure_tokenizer_probes(mel_vqvae_paths(model), **probes))
    return metrics


def mel_vqvae_paths(model, vocoder: str = "vocos_course", griffin_lim_iters: int = 32) -> dict:
    """``{"vocos": audio → log-mel → VQ-VAE → shipped vocoder, "griffin_lim": … → Griffin-Lim}`` for
    :func:`measure_tokenizer_probes` (the vocoder must read the VQ-VAE's mel front end)."""
    from course_lib.audio import log_mel
    from course_lib.pipelines.diffsound import load_vocoder
    from course_lib.vocoders.griffin_lim import GriffinLimVocoder

    mel_config = model.config.mel_config()
    vocoders = {"vocos": load_vocoder(vocoder), "griffin_lim": GriffinLimVocoder(mel_config, n_iter=griffin_lim_iters)}

    def through(vocoder):
        return lambda audio: vocoder(model(log_mel(audio[:, 0], mel_config))[0])

    return {name: through(v) for name, v in vocoders.items()}


@torch.no_grad()
def measure_codec(model, n_clips: int = 24, clip_seconds: float = 4.0, batch_size: int = 8,
                  probes: dict | None = None) -> dict[str, float]:
    """Waveform codec: held-out log-mel distance (dB, :func:`course_lib.metrics.log_mel_distance_db`) and
    EnCodec's multi-scale mel distance (:class:`~course_lib.codecs.losses.MultiScaleMelLoss`, what the codec is
    trained on) decoded from the first 1..n_q codebooks, SI-SDR with all codebooks, the bitrate, and the
    perplexity of the first codebook. With ``probes`` (keyword arguments of :func:`measure_tokenizer_probes`):
    the course's probes through the codec at 1, n_q / 2 and n_q codebooks (``v2_q4_class_accuracy`` …)."""
    from course_lib.codecs.losses import MultiScaleMelLoss, si_sdr
    from course_lib.metrics import log_mel_distance_db
    from course_lib.quantize import perplexity

    cfg = model.config
    audio = heldout_audio(n_clips, clip_seconds, cfg.sample_rate)
    msspec = MultiScaleMelLoss(cfg.sample_rate)
    per_level: dict[int, list[torch.Tensor]] = {n: [] for n in range(1, cfg.n_q + 1)}
    msspec_level: dict[int, float] = {n: 0.0 for n in per_level}
    sdr, first_codes = [], []
    for batch in audio.split(batch_size):
        codes = model.encode(batch)
        for n in per_level:
            recon = model.decode(codes[:, :n])[..., : batch.shape[-1]]
            per_level[n].append(log_mel_distance_db(recon, batch))
            msspec_level[n] += float(msspec(recon, batch)) * batch.shape[0]
        sdr.append(si_sdr(recon, batch))
        first_codes.append(codes[:, 0].flatten())
    metrics = {f"mel_db_q{n}": round(float(torch.cat(v).mean()), 3) for n, v in per_level.items()}
    metrics.update({f"mel_distance_q{n}": round(v / n_clips, 4) for n, v in msspec_level.items()})
    metrics.update({
        "si_sdr_db": round(float(torch.cat(sdr).mean()), 2),
        "kbps": round(model.bitrate() / 1000, 3),
        "perplexity_q1": round(float(perplexity(torch.cat(first_codes), cfg.codebook_size)), 2),
    })
    if probes is not None:
        metrics.update(measure_tokenizer_probes(codec_paths(model), **probes))
    return metrics


@torch.no_grad()
def measure_melgan(model, n_clips: int = 24, clip_seconds: float = 2.0, batch_size: int = 8,
                   griffin_lim_iters: int = 32, vqvae: str | None = None) -> dict[str, float]:
    """Vocoder: held-out log-mel distance (dB, :func:`course_lib.metrics.log_mel_distance_db`) between each
    clip and the audio made from its log-mel, by MelGAN and by the Griffin-Lim baseline (``griffin_lim_iters``
    iterations) for comparison: ``mel_db`` and ``griffin_lim_mel_db``. With ``vqvae`` (a shipped mel VQ-VAE,
    e.g. ``"mel_vqvae_course"``), both vocoders are also given that VQ-VAE's reconstruction of each log-mel,
    what Diffsound hands a vocoder, and scored against the original clip: ``vqvae_mel_db`` and
    ``vqvae_griffin_lim_mel_db``."""
    from course_lib.metrics import log_mel_distance_db
    from course_lib.vocoders.griffin_lim import GriffinLimVocoder

    audio = heldout_audio(n_clips, clip_seconds, model.config.sample_rate)
    griffin_lim = GriffinLimVocoder(model.mel_config, n_iter=griffin_lim_iters)
    inputs = {"": lambda mel: mel}
    if vqvae is not None:
        from course_lib.pipelines.diffsound import load_vqvae

        autoencoder = load_vqvae(vqvae)
        if autoencoder.config.mel_config() != model.mel_config:
            raise ValueError(f"measure_melgan: vqvae={vqvae!r} reads {autoencoder.config.mel_config()}, the vocoder "
                             f"reads {model.mel_config}: they must share the mel front end")
        inputs["vqvae_"] = lambda mel: autoencoder(mel)[0]
    scores: dict[str, list[torch.Tensor]] = {}
    for batch in audio.split(batch_size):
        length = batch.shape[-1]
        for prefix, transform in inputs.items():
            mel = transform(model.features(batch))
            for name, vocoder in (("mel_db", model), ("griffin_lim_mel_db", griffin_lim)):
                scores.setdefault(prefix + name, []).append(
                    log_mel_distance_db(vocoder(mel)[..., :length], batch, model.mel_config))
    return {name: round(float(torch.cat(values).mean()), 3) for name, values in scores.items()}


_CLASSIFIERS: dict[tuple[float, int], torch.nn.Module] = {}  # (clip_seconds, sample_rate) -> trained probe


def event_probe(clip_seconds: float, sample_rate: int) -> torch.nn.Module:
    """The class probe for :func:`measure_audiogen`: :func:`course_lib.data.probes.train_event_classifier`
    with seed 0 on ``clip_seconds`` train-split clips, trained once per process (about 5 s on one thread)."""
    from course_lib.data.probes import train_event_classifier

    key = (float(clip_seconds), int(sample_rate))
    if key not in _CLASSIFIERS:
        with torch.enable_grad():  # the callers measure under no_grad
            _CLASSIFIERS[key] = train_event_classifier(n_per_class=40, seed=0, clip_seconds=clip_seconds,
                                                       sample_rate=sample_rate)
    return _CLASSIFIERS[key]


def adherence_rates(audio: torch.Tensor, sample_rate: int, clips: list, classifier) -> dict[str, float]:
    """Share of clips whose ``audio`` ``(N, 1, T)`` passes each probe their attributes define (class, count,
    pitch band); a probe no clip's attributes define is left out."""
    from course_lib.data.probes import adherence

    checks = [adherence(a[0].cpu().numpy(), sample_rate, c.attributes, classifier) for a, c in zip(audio, clips)]
    rates = {}
    for key in ("class", "count", "pitch_band"):
        hits = [r[key] for r in checks if key in r]
        if hits:
            rates[f"{key}_accuracy"] = round(sum(hits) / len(hits), 4)
    return rates


# A rate over prompts (``<prefix>class_accuracy`` ...) counts the prompts whose attributes define that check.
RATE_ATTRIBUTES = {"class_accuracy": "class", "count_accuracy": "count", "pitch_band_accuracy": "pitch_band",
                   "tempo_accuracy": "tempo_bpm", "mode_accuracy": "mode", "instrument_accuracy": "instrument"}
_RATE_PREFIXES = ("cascade_ceiling_", "ceiling_", "heldout_", "low_", "")


_VERSION_TAG = re.compile(r"^v(\d+)_")
# Paths a vocoder card's rates are measured on (measure_vocoder), stripped before the attribute is looked up.
_PATH_PREFIXES = ("vqvae_griffin_lim_", "vqvae_", "griffin_lim_", "real_", "vocos_")
_CODEC_LEVEL = re.compile(r"^q\d+_")


def rate_counts(metrics: dict[str, float], clips: list | dict[int, list]) -> dict[str, int]:
    """For each prompt-adherence rate in ``metrics``, the number of ``clips`` it is a share of.

    A rate's denominator depends only on the prompts' attributes (a count is checked only for prompts with a
    count, a mode only where a key is given), never on the audio, so it is the same on every machine: the
    card tests use it to turn "at most ``f`` prompts may flip" into a tolerance of ``f / n``. ``clips`` may be
    ``{version: clips}`` for rates measured per data version (keys ``v1_…``, ``v2_…``, as
    :func:`measure_vocoder` writes them)."""
    counts = {}
    for key in metrics:
        pool, rest = clips, key
        if isinstance(clips, dict):
            tag = _VERSION_TAG.match(key)
            if tag is None or int(tag.group(1)) not in clips:
                continue
            pool, rest = clips[int(tag.group(1))], key[tag.end():]
            rest = next((rest[len(p):] for p in _PATH_PREFIXES if rest.startswith(p)), rest)
            level = _CODEC_LEVEL.match(rest)  # a codec's round trip at q codebooks (codec_paths)
            rest = rest[level.end():] if level else rest
        for prefix in _RATE_PREFIXES:
            base = rest[len(prefix):] if rest.startswith(prefix) else None
            if base in RATE_ATTRIBUTES:
                attribute = RATE_ATTRIBUTES[base]
                needs_key = attribute == "mode"  # the mode is checked on the prompt's tonic
                counts[key] = sum(1 for c in pool if c.attributes.get(attribute) is not None
                                  and (not needs_key or c.attributes.get("key") is not None))
                break
    return counts


# Prompts a rate may differ by on another machine (see course_lib.pretrained.metric_tolerance). Token samplers
# (AudioGen, Diffsound, its AR baseline) draw thousands of categorical tokens per clip: one draw that rounds the
# other way changes the rest of the clip (seen: 1 prompt of 24 between two CPUs), so 2. Noise2Music's DDIM
# sampler is continuous in its inputs: only a probe's decision right at its boundary can flip, so 1.
# Tokenizer cards whose measure runs the probes (settings["probes"]); their encoding is deterministic, but a code
# at a near-tie of two codebook entries may round the other way on another CPU, and a probe decide at its edge.
TOKENIZER_PROBE_CARDS = ("codec_v2", "mel_vqvae_v2")
RATE_FLIPS = {"codec_v2": 1, "mel_vqvae_v2": 1, "audiogen_course": 2, "diffsound_course": 2, "diffsound_ar_course": 2,
              "diffsound_v2": 2, "diffsound_ar_v2": 2,
              "n2m_generator_course": 1, "n2m_cascader_course": 1, "vocos_course": 1}


def tolerance_text(relative: float, rate_flips: int) -> str:
    """The sentence a card uses to say how closely the tests must reproduce its metrics."""
    text = (f"The tests re-measure every metric; one reproduces the card if it lies within {relative:.0%} of the "
            "card's value (at least 0.001): float rounding, which differs between CPUs.")
    if rate_flips:
        prompts = f"{rate_flips} prompt{'s' * (rate_flips > 1)}"
        text += (f" A prompt-adherence rate over n prompts (`rate_counts`) may also differ by {prompts} "
                 f"({rate_flips}/n): on another CPU a float rounded the other way can change one sampled token, "
                 "and with it a whole generated clip, or a probe's decision at its boundary (seen: 1 prompt of 24). "
                 "A damaged model moves far more (tests/test_pretrained.py).")
    return text


def prompt_clips(name: str, settings: dict) -> list | dict[int, list]:
    """The test-split clips whose captions a generative card's measure prompts with (``[]`` for other models);
    for a vocoder card, ``{version: the sound-event clips its probes read}`` (:func:`measure_vocoder`)."""
    if name in TOKENIZER_PROBE_CARDS:
        settings = settings.get("probes")
        if settings is None:
            return []
        n, seconds = settings.get("n_clips", 48), float(settings.get("clip_seconds", 4.0))
        start = settings.get("start", 0)
        return {v: heldout_clips("sound_events", n, seconds, 16_000, v, start)
                + heldout_clips("music", n, seconds, 16_000, v, start) for v in settings.get("versions", (2,))}
    if name == "vocos_course":
        if not settings.get("probes", True):
            return []
        n, seconds = settings.get("n_clips", 24), float(settings.get("clip_seconds", 2.0))
        return {v: heldout_clips("sound_events", n, seconds, 16_000, v) for v in settings.get("versions", (1, 2))}
    if name in ("audiogen_course", "diffsound_course", "diffsound_ar_course", "diffsound_v2", "diffsound_ar_v2"):
        return list(sound_events.generate_clips("test", settings.get("n_prompts", 24), settings.get("seconds", 2.0),
                                                16_000, version=settings.get("version", 1)))
    if name in ("n2m_generator_course", "n2m_cascader_course", "n2m_generator_v2", "n2m_cascader_v2"):
        seconds = settings.get("seconds", 4.0 if name.startswith("n2m_generator") else 2.0)
        return list(music.generate_clips("test", settings.get("n_prompts", 24), float(seconds), 16_000,
                                         version=settings.get("version", 1)))
    return []


@torch.no_grad()
def measure_audiogen(model, n_prompts: int = 24, seconds: float = 2.0, cfg_scale: float = 3.0, seed: int = 0,
                     codec=None, text_encoder=None, top_k: int = 250, temperature: float = 1.0,
                     batch_size: int = 12) -> dict[str, float]:
    """AudioGen LM: prompt adherence on fresh test-split sound-event captions, read back by the probes.

    The captions of test-split clips ``0 … n_prompts − 1`` (class-balanced) are generated ``seconds`` long with
    :class:`course_lib.pipelines.AudioGenPipeline` (``codec`` and ``text_encoder`` default to the shipped
    ``codec_course`` and ``"course"``; CFG ``cfg_scale``, ``top_k``, ``temperature``; the draws of batch ``b``
    seeded with ``seed + b``), and each clip is checked against its prompt's attributes with
    :func:`course_lib.data.probes.adherence`: ``class_accuracy`` (the :class:`EventClassifier` probe, trained
    once per process with seed 0), ``count_accuracy`` (over prompts with a count) and
    ``pitch_band_accuracy`` (over pitched prompts). ``ceiling_*`` are the same probes on the real clips passed
    through the codec: the most the LM can reach through this codec. Deterministic for fixed arguments.
    """
    from course_lib.pipelines.audiogen import AudioGenPipeline, load_codec, load_text

    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise ValueError(f"n_prompts must be a positive int, got {n_prompts!r}")
    pipe = AudioGenPipeline(model, codec if codec is not None else load_codec("codec_course"),
                            load_text(text_encoder if text_encoder is not None else "course"))
    rate = pipe.sample_rate
    clips = list(sound_events.generate_clips("test", n_prompts, seconds, rate))
    classifier = event_probe(float(seconds), rate)
    generated, ceiling = [], []
    for b, start in enumerate(range(0, n_prompts, batch_size)):
        part = clips[start:start + batch_size]
        generated.append(pipe.generate([c.caption for c in part], seconds=seconds, cfg_scale=cfg_scale,
                                       temperature=temperature, top_k=top_k, seed=seed + b))
        real = torch.from_numpy(np.stack([c.audio for c in part]))[:, None].to(pipe.device)
        ceiling.append(pipe.decode(pipe.codec.encode(real), seconds))
    metrics = adherence_rates(torch.cat(generated), rate, clips, classifier)
    metrics.update({f"ceiling_{k}": v for k, v in adherence_rates(torch.cat(ceiling), rate, clips, classifier).items()})
    return metrics


@torch.no_grad()
def measure_diffsound(model, n_prompts: int = 24, seconds: float = 2.0, steps: int | None = None,
                      cfg_scale: float = 3.0, seed: int = 0, vqvae=None, vocoder=None, text_encoder=None,
                      truncation: float | None = 0.86, temperature: float = 1.0, top_k: int | None = None,
                      batch_size: int = 12, timing: bool = True, version: int = 1,
                      heldout_grammar: bool = False) -> dict[str, float]:
    """Diffsound token decoder (a ``DiffsoundModel``, or the AR-baseline ``AudioLM``): prompt adherence on fresh
    test-split sound-event captions, read back by the probes, and generation time.

    As :func:`measure_audiogen`, through :class:`course_lib.pipelines.DiffsoundPipeline` (``vqvae`` and
    ``text_encoder`` default to the shipped ``mel_vqvae_course`` and ``"course"``, ``vocoder`` to Griffin-Lim
    with 32 iterations; a name, folder or model each, e.g. ``vocoder="melgan_course"``). Griffin-Lim is the
    default because the probes read the shipped MelGAN's output poorly: real test clips through the VQ-VAE and
    Griffin-Lim keep class / count / pitch band 0.83 / 0.79 / 1.0 of the time (24 prompts), through the VQ-VAE
    and ``melgan_course`` only 0.38 / 0.64 / 0.10, a ceiling too low to compare decoders.

    The captions of test-split clips ``0 … n_prompts − 1`` are generated ``seconds`` long (``steps`` reverse
    steps for Diffsound, None = all T; CFG ``cfg_scale``, ``truncation``, ``temperature``, ``top_k`` for the AR
    baseline only; the draws of batch ``b`` seeded with ``seed + b``) and checked with
    :func:`course_lib.data.probes.adherence`:
    ``class_accuracy``, ``count_accuracy`` (prompts with a count), ``pitch_band_accuracy`` (pitched prompts).
    ``ceiling_*`` are the same probes on the real clips through the VQ-VAE and the vocoder: the most any token
    decoder can reach through them. ``seconds_per_clip`` is the token decoder's wall-clock time per clip (the
    VQ-VAE decoder and vocoder, shared by both decoders, are not counted): the one key that is not
    deterministic (``timing=False`` leaves it out, as the shipped cards do); every rate is, for fixed arguments.

    ``version`` picks the data generator the prompts come from (1, or 2 for the version 2 sound events, read
    by the version 2 class probe of :func:`version_probes`, trained on real v2 clips only). With
    ``heldout_grammar`` (version 2 only) the same test clips are also captioned from the held-out caption
    grammar (templates and words no training caption used, :mod:`course_lib.data.captions_v2`) and generated
    again: ``heldout_*`` rates, to compare with the seen-grammar ones (the ceiling is the same audio).
    """
    import time

    from course_lib.pipelines.audiogen import load_text
    from course_lib.pipelines.diffsound import DiffsoundPipeline, load_vocoder, load_vqvae

    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise ValueError(f"n_prompts must be a positive int, got {n_prompts!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if heldout_grammar and version < 2:
        raise ValueError("heldout_grammar=True needs version=2: the held-out caption grammar is version 2's")
    vq = load_vqvae(vqvae if vqvae is not None else "mel_vqvae_course")
    voc = load_vocoder(vocoder if vocoder is not None else "griffin_lim", vq.config.mel_config())
    pipe = DiffsoundPipeline(model, vq, voc, load_text(text_encoder if text_encoder is not None else "course"))
    rate = pipe.sample_rate
    clips = list(sound_events.generate_clips("test", n_prompts, seconds, rate, version=version))
    classifier = event_probe(float(seconds), rate) if version == 1 else version_probes(version, seconds, rate)[0]
    elapsed = 0.0

    def generate(prompts: list[str], b: int) -> torch.Tensor:
        nonlocal elapsed
        t0 = time.perf_counter()
        tokens = pipe.generate_tokens(prompts, seconds=seconds, steps=steps, cfg_scale=cfg_scale,
                                      truncation=truncation, temperature=temperature, top_k=top_k, seed=seed + b)
        elapsed += time.perf_counter() - t0
        return pipe.vocode(pipe.tokens_to_mel(tokens, seconds))[..., : pipe.num_samples(seconds)]

    generated, ceiling = [], []
    for b, start in enumerate(range(0, n_prompts, batch_size)):
        part = clips[start:start + batch_size]
        generated.append(generate([c.caption for c in part], b))
        real = torch.from_numpy(np.stack([c.audio for c in part]))[:, None]
        ceiling.append(pipe.vocode(pipe.tokens_to_mel(pipe.tokenize(real), seconds))[..., : pipe.num_samples(seconds)])
    metrics = adherence_rates(torch.cat(generated), rate, clips, classifier)
    metrics.update({f"ceiling_{k}": v for k, v in adherence_rates(torch.cat(ceiling), rate, clips, classifier).items()})
    if heldout_grammar:
        held = list(sound_events.generate_clips("test", n_prompts, seconds, rate, version=version, grammar="heldout"))
        audio = torch.cat([generate([c.caption for c in held[start:start + batch_size]], b)
                           for b, start in enumerate(range(0, n_prompts, batch_size))])
        metrics.update({f"heldout_{k}": v for k, v in adherence_rates(audio, rate, held, classifier).items()})
    if timing:
        metrics["seconds_per_clip"] = round(elapsed / n_prompts, 4)
    return metrics


# ---- Noise2Music: the generator, the cascader and the cascade --------------------------------------------------

_INSTRUMENT_PROBES: dict[tuple[float, int], torch.nn.Module] = {}  # (clip_seconds, sample_rate) -> trained probe


def instrument_probe(clip_seconds: float, sample_rate: int, version: int = 1) -> torch.nn.Module:
    """The instrument probe of the Noise2Music measures at ``sample_rate`` (3.2 kHz for low-rate audio, 16 kHz for
    the cascade's): :func:`course_lib.data.music_probes.train_instrument_classifier` with seed 0 on 40
    ``clip_seconds`` train-split clips per instrument of music generator ``version`` (1: six instruments; 2: the
    SoundFont's eight), trained once per process (5-10 s on one thread)."""
    from course_lib.data.music_probes import train_instrument_classifier

    key = (float(clip_seconds), int(sample_rate)) if version == 1 else (float(clip_seconds), int(sample_rate), version)
    if key not in _INSTRUMENT_PROBES:
        with torch.enable_grad():  # the callers measure under no_grad
            _INSTRUMENT_PROBES[key] = train_instrument_classifier(n_per_class=40, seed=0, clip_seconds=clip_seconds,
                                                                  sample_rate=sample_rate, version=version)
    return _INSTRUMENT_PROBES[key]


def music_rates(audio: torch.Tensor, sample_rate: int, clips: list, classifier, prefix: str = "") -> dict[str, float]:
    """:func:`~course_lib.data.music_probes.summarise_adherence` of ``audio`` ``(N, 1, T)`` against the clips'
    attributes: ``tempo_accuracy`` (±8%), ``tempo_error_bpm`` (median), ``mode_accuracy``, ``instrument_accuracy``."""
    from course_lib.data.music_probes import music_adherence, summarise_adherence

    checks = [music_adherence(a[0].cpu().numpy(), sample_rate, c.attributes, classifier) for a, c in zip(audio, clips)]
    return {f"{prefix}{k}": v for k, v in summarise_adherence(checks).items()}


def _n2m_setup(n_prompts: int, seconds: float, batch_size: int, version: int = 1) -> list:
    """Validate the shared arguments; the test-split music clips ``0 … n_prompts − 1`` (16 kHz, ``seconds`` long) of
    music generator ``version``."""
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise ValueError(f"n_prompts must be a positive int, got {n_prompts!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 1.0:
        raise ValueError(f"seconds must be a number >= 1 (the music generator's shortest clip), got {seconds!r}")
    return list(music.generate_clips("test", n_prompts, float(seconds), 16_000, version=version))


def _n2m_pipeline(generator, cascader, text_encoder):
    from course_lib.pipelines.audiogen import load_text
    from course_lib.pipelines.noise2music import Noise2MusicPipeline, load_stage

    return Noise2MusicPipeline(None if generator is None else load_stage(generator),
                               None if cascader is None else load_stage(cascader),
                               load_text(text_encoder if text_encoder is not None else "course"))


def _band_energy_db(audio: torch.Tensor, reference: torch.Tensor, above_hz: float, sample_rate: int) -> torch.Tensor:
    """``10·log10`` of the energy of ``audio`` above ``above_hz`` over that of ``reference``, per clip ``(B,)``."""
    freqs = torch.fft.rfftfreq(audio.shape[-1], 1.0 / sample_rate).to(audio.device)
    band = freqs >= above_hz
    energy = [torch.fft.rfft(x[:, 0].float()).abs().pow(2)[:, band].sum(dim=1) for x in (audio, reference)]
    return 10 * torch.log10(energy[0].clamp_min(1e-12) / energy[1].clamp_min(1e-12))


def _real_batch(part: list, pipe) -> torch.Tensor:
    return torch.from_numpy(np.stack([c.audio for c in part]))[:, None].to(pipe.device)


@torch.no_grad()
def measure_n2m_generator(model, n_prompts: int = 24, seconds: float = 4.0, steps: int | None = None,
                          cfg_scale: float | None = None, seed: int = 0, text_encoder=None,
                          batch_size: int = 12, timing: bool = True, version: int = 1) -> dict[str, float]:
    """Noise2Music generator (a ``Noise2MusicStage``, a shipped name or a folder): prompt adherence of its
    low-rate (3.2 kHz) audio on fresh test-split music captions, read back by the music probes.

    The captions of test-split music clips ``0 … n_prompts − 1`` (instruments cycle with the index) are
    generated ``seconds`` long by :meth:`Noise2MusicPipeline.generate_low` (DDIM, ``steps`` and guidance
    ``cfg_scale``: None = the model's ``diffusion.num_steps`` / ``guidance_scale``, 1 = no guidance; batch ``b``
    seeded ``seed + b``; ``text_encoder`` defaults to ``"course"``) and checked with
    :func:`course_lib.data.music_probes.music_adherence` at the low rate: ``tempo_accuracy`` (within ±8%),
    ``tempo_error_bpm`` (median absolute error), ``mode_accuracy`` (major/minor on the prompt's tonic),
    ``instrument_accuracy`` (the 3.2 kHz instrument probe). ``ceiling_*``: the same probes on the real clips
    at the low rate (peak-scaled and resampled, what the generator is trained to produce).
    ``seconds_per_clip`` is the generator's wall-clock time per clip, the one key that is not deterministic
    (``timing=False`` leaves it out, as the shipped card does).
    """
    import time

    clips = _n2m_setup(n_prompts, seconds, batch_size, version)
    pipe = _n2m_pipeline(model, None, text_encoder)
    rate = pipe.low_rate
    generated, real, elapsed = [], [], 0.0
    for b, start in enumerate(range(0, n_prompts, batch_size)):
        part = clips[start:start + batch_size]
        t0 = time.perf_counter()
        generated.append(pipe.generate_low([c.caption for c in part], seconds, steps, cfg_scale, seed + b))
        elapsed += time.perf_counter() - t0
        real.append(pipe.to_low(_real_batch(part, pipe), 16_000))
    probe = instrument_probe(float(seconds), rate, version)
    metrics = music_rates(torch.cat(generated), rate, clips, probe)
    metrics.update(music_rates(torch.cat(real), rate, clips, probe, "ceiling_"))
    if timing:
        metrics["seconds_per_clip"] = round(elapsed / n_prompts, 4)
    return metrics


@torch.no_grad()
def measure_n2m_cascader(model, n_prompts: int = 24, seconds: float = 2.0, steps: int | None = None,
                         cfg_scale: float | None = None, aug_level: float | None = None, seed: int = 0,
                         text_encoder=None, batch_size: int = 12, timing: bool = True,
                         version: int = 1) -> dict[str, float]:
    """Noise2Music cascader (a ``Noise2MusicStage``, name or folder) on real low-rate audio: how close its 16 kHz
    output comes to the real clip, and whether the probes still read the prompt from it.

    The test-split music clips ``0 … n_prompts − 1`` (``seconds`` long) go through
    :meth:`Noise2MusicPipeline.to_low` (peak 0.9, 3.2 kHz) and :meth:`Noise2MusicPipeline.upsample` with their
    captions (``steps``, ``cfg_scale``, ``aug_level``: None = the model's own; batch ``b`` seeded ``seed + b``).
    ``mel_db``: :func:`course_lib.metrics.log_mel_distance_db` from the output to the real (peak-scaled) clip;
    ``input_mel_db``: the same for the low-rate input upsampled by a sinc filter (no high band: what the
    cascader has to beat). ``high_band_db``: the output's energy above ``low_rate / 2`` (the band the cascader
    adds) against the real clip's, in dB, mean over clips: 0 is the right amount, very negative is a missing
    high band, positive is too much (hiss). The music probes at 16 kHz: ``tempo_accuracy``, ``tempo_error_bpm``,
    ``mode_accuracy``, ``instrument_accuracy`` (the 16 kHz instrument probe); ``ceiling_*`` on the real clips.
    ``seconds_per_clip``: the cascader's wall-clock time per clip (not deterministic, the rest is; ``timing=False``
    leaves it out, as the shipped card does).
    """
    import time

    from course_lib.audio import resample
    from course_lib.metrics import log_mel_distance_db
    from course_lib.pipelines.noise2music import scale_to_peak

    clips = _n2m_setup(n_prompts, seconds, batch_size, version)
    pipe = _n2m_pipeline(None, model, text_encoder)
    rate, peak = pipe.sample_rate, pipe.cascader.config.peak
    outputs, reals, mel, input_mel, high_db, elapsed = [], [], [], [], [], 0.0
    for b, start in enumerate(range(0, n_prompts, batch_size)):
        part = clips[start:start + batch_size]
        real = scale_to_peak(_real_batch(part, pipe), peak)
        low = pipe.to_low(real, 16_000)
        t0 = time.perf_counter()
        out = pipe.upsample(low, [c.caption for c in part], steps, cfg_scale, aug_level, seed + b)
        elapsed += time.perf_counter() - t0
        n = out.shape[-1]
        mel.append(log_mel_distance_db(out, real[..., :n]))
        high_db.append(_band_energy_db(out, real[..., :n], pipe.low_rate / 2, rate))
        input_mel.append(log_mel_distance_db(resample(low, pipe.low_rate, rate)[..., :n], real[..., :n]))
        outputs.append(out)
        reals.append(real)
    probe = instrument_probe(float(seconds), rate, version)
    metrics = music_rates(torch.cat(outputs), rate, clips, probe)
    metrics.update(music_rates(torch.cat(reals), rate, clips, probe, "ceiling_"))
    metrics["mel_db"] = round(float(torch.cat(mel).mean()), 3)
    metrics["input_mel_db"] = round(float(torch.cat(input_mel).mean()), 3)
    metrics["high_band_db"] = round(float(torch.cat(high_db).mean()), 3)
    if timing:
        metrics["seconds_per_clip"] = round(elapsed / n_prompts, 4)
    return metrics


@torch.no_grad()
def measure_noise2music(generator, cascader, n_prompts: int = 24, seconds: float = 4.0, steps: int | None = None,
                        cfg_scale: float | None = None, casc_steps: int | None = None,
                        casc_cfg_scale: float | None = None, aug_level: float | None = None, seed: int = 0,
                        text_encoder=None, batch_size: int = 12, through_cascader: bool = True,
                        version: int = 1) -> dict[str, float]:
    """The whole cascade: prompt adherence of the final 16 kHz music on fresh test-split music captions.

    The captions of test-split music clips ``0 … n_prompts − 1`` are generated ``seconds`` long by
    :meth:`Noise2MusicPipeline.generate` (generator ``steps`` / ``cfg_scale``, cascader ``casc_steps`` /
    ``casc_cfg_scale`` / ``aug_level``; None = each stage's own; batch ``b`` seeded ``seed + b``) and read back
    at 16 kHz: ``tempo_accuracy`` (±8%), ``tempo_error_bpm`` (median), ``mode_accuracy`` (on the prompt's
    tonic), ``instrument_accuracy`` (the 16 kHz probe). ``low_*``: the same probes on the generator's low-rate
    output (3.2 kHz probe), so a drop from ``low_*`` to the final numbers is the cascader's. Ceilings, on the
    real test clips: ``ceiling_*`` the real 16 kHz clips themselves (what perfect generation would score);
    with ``through_cascader``, ``cascade_ceiling_*`` the real clips brought to the low rate and upsampled by
    the cascader (the most a perfect generator could reach through this cascader). Timing, not deterministic
    (the rest is): ``seconds_per_clip_generator``, ``seconds_per_clip_cascader`` (wall-clock per clip) and
    ``seconds_per_audio_second`` (both stages, per second of music).
    """
    import time

    from course_lib.pipelines.noise2music import scale_to_peak

    clips = _n2m_setup(n_prompts, seconds, batch_size, version)
    pipe = _n2m_pipeline(generator, cascader, text_encoder)
    lows, finals, reals, cascaded = [], [], [], []
    t_gen = t_casc = 0.0
    for b, start in enumerate(range(0, n_prompts, batch_size)):
        part = clips[start:start + batch_size]
        captions = [c.caption for c in part]
        t0 = time.perf_counter()
        low = pipe.generate_low(captions, seconds, steps, cfg_scale, seed + b)
        t1 = time.perf_counter()
        finals.append(pipe.upsample(low, captions, casc_steps, casc_cfg_scale, aug_level, seed + b))
        t_gen, t_casc = t_gen + t1 - t0, t_casc + time.perf_counter() - t1
        lows.append(low)
        real = scale_to_peak(_real_batch(part, pipe), pipe.cascader.config.peak)
        reals.append(real)
        if through_cascader:
            cascaded.append(pipe.upsample(pipe.to_low(real, 16_000), captions, casc_steps, casc_cfg_scale, aug_level,
                                          seed + b))
    rate, low_rate = pipe.sample_rate, pipe.low_rate
    probe = instrument_probe(float(seconds), rate, version)
    metrics = music_rates(torch.cat(finals), rate, clips, probe)
    metrics.update(music_rates(torch.cat(lows), low_rate, clips, instrument_probe(float(seconds), low_rate, version), "low_"))
    metrics.update(music_rates(torch.cat(reals), rate, clips, probe, "ceiling_"))
    if through_cascader:
        metrics.update(music_rates(torch.cat(cascaded), rate, clips, probe, "cascade_ceiling_"))
    metrics["seconds_per_clip_generator"] = round(t_gen / n_prompts, 4)
    metrics["seconds_per_clip_cascader"] = round(t_casc / n_prompts, 4)
    metrics["seconds_per_audio_second"] = round((t_gen + t_casc) / (n_prompts * seconds), 4)
    return metrics


# ---- Vocoders compared with Griffin-Lim, by the mel distance and by the probes ---------------------------------


def heldout_clips(kind: str, n_clips: int, clip_seconds: float, sample_rate: int, version: int = 1,
                  start: int = 0) -> list:
    """Test-split clips ``start … start + n_clips − 1`` of course generator ``kind`` at ``version`` (1 or 2)."""
    module = {"sound_events": sound_events, "music": music}[kind]
    return list(module.generate_clips("test", n_clips, clip_seconds, sample_rate, start=start, version=version))


def _stack(clips: list) -> torch.Tensor:
    return torch.from_numpy(np.stack([c.audio for c in clips]))[:, None]


def vocoder_rtf(vocoder, mel_config, seconds: float = 2.0, clips: int = 4, repeats: int = 3,
                clock: str = "wall") -> float:
    """Real-time factor of ``vocoder`` on ONE torch thread: seconds of audio made per second of time, on ``clips``
    log-mels of ``seconds`` each in one batch (best of ``repeats`` after a warm-up run). ``clock="wall"``:
    wall-clock time (what a listener waits); ``"cpu"``: this process's CPU time, which other processes on a
    shared machine do not inflate. The thread count is restored afterwards."""
    import time

    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    now = time.perf_counter if clock == "wall" else time.process_time

    from course_lib.audio import log_mel

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        audio = heldout_audio(clips, seconds, mel_config.sample_rate)
        mel = log_mel(audio[:, 0], mel_config)
        with torch.no_grad():
            vocoder(mel)
            best = math.inf
            for _ in range(repeats):
                t0 = now()
                vocoder(mel)
                best = min(best, now() - t0)
    finally:
        torch.set_num_threads(before)
    return clips * seconds / best


@torch.no_grad()
def measure_vocoder(model, n_clips: int = 24, clip_seconds: float = 2.0, batch_size: int = 8,
                    griffin_lim_iters: int = 32, vqvae: str | None = "mel_vqvae_course",
                    versions: tuple[int, ...] = (1, 2), probes: bool = True, timing: bool = True) -> dict[str, float]:
    """Any vocoder (:class:`course_lib.vocoders.Vocoder`: MelGAN, Vocos, ...) against Griffin-Lim on held-out clips
    of each data ``version`` (1: the course's synthesised music and dry sound events; 2: SoundFont music and sound
    events in a room), keys prefixed ``v1_`` / ``v2_``:

    * log-mel distance (dB, :func:`course_lib.metrics.log_mel_distance_db`) between each of ``n_clips`` test
      clips of ``clip_seconds`` (half sound events, half music, as :func:`measure_melgan`) and the audio made
      from its log-mel by the vocoder (``mel_db``) and by Griffin-Lim with ``griffin_lim_iters`` iterations
      (``griffin_lim_mel_db``); with ``vqvae`` (a shipped mel VQ-VAE), also from that VQ-VAE's reconstruction of
      the log-mel, what Diffsound hands a vocoder (``vqvae_mel_db``, ``vqvae_griffin_lim_mel_db``);
    * with ``probes``: the share of ``n_clips`` test sound-event clips (class-balanced) whose audio passes each
      probe of :func:`course_lib.data.probes.adherence` (class, with the event classifier the shipped cards use,
      :func:`event_probe`, trained on version 1 clips; count; pitch band): on the original audio
      (``real_class_accuracy`` …), the vocoder's (``class_accuracy`` …), Griffin-Lim's
      (``griffin_lim_class_accuracy`` …) and through the VQ-VAE (``vqvae_…``, ``vqvae_griffin_lim_…``);
    * with ``timing``: ``rtf_1_thread`` and ``rtf_1_thread_cpu``, the vocoder's real-time factor on one torch
      thread by wall-clock and by CPU time (:func:`vocoder_rtf`; the keys that are not deterministic).

    The vocoder reads ``course_lib.audio.log_mel(audio, model.mel_config)``; a ``vqvae`` must share that front end.
    """
    from course_lib.audio import log_mel
    from course_lib.metrics import log_mel_distance_db
    from course_lib.vocoders.griffin_lim import GriffinLimVocoder

    if isinstance(n_clips, bool) or not isinstance(n_clips, int) or n_clips < 2:
        raise ValueError(f"n_clips must be an int >= 2, got {n_clips!r}")
    mel_config = model.mel_config
    rate = mel_config.sample_rate
    griffin_lim = GriffinLimVocoder(mel_config, n_iter=griffin_lim_iters)
    inputs = {"": lambda mel: mel}
    if vqvae is not None:
        from course_lib.pipelines.diffsound import load_vqvae

        autoencoder = load_vqvae(vqvae)
        if autoencoder.config.mel_config() != mel_config:
            raise ValueError(f"measure_vocoder: vqvae={vqvae!r} reads {autoencoder.config.mel_config()}, the vocoder "
                             f"reads {mel_config}: they must share the mel front end")
        inputs["vqvae_"] = lambda mel: autoencoder(mel)[0]
    vocoders = {"": model, "griffin_lim_": griffin_lim}

    def vocode(audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{input prefix + vocoder prefix: audio (N, 1, T)}`` for every input path and vocoder, in batches."""
        out: dict[str, list[torch.Tensor]] = {}
        for batch in audio.split(batch_size):
            mel = log_mel(batch[:, 0], mel_config)
            for path, transform in inputs.items():
                given = transform(mel)
                for name, vocoder in vocoders.items():
                    made = vocoder(given)[..., : batch.shape[-1]].float()
                    out.setdefault(path + name, []).append(made.clamp(-1.0, 1.0))
        return {key: torch.cat(parts) for key, parts in out.items()}

    metrics: dict[str, float] = {}
    classifier = event_probe(float(clip_seconds), rate) if probes else None
    for version in versions:
        tag = f"v{version}_"
        n_music = n_clips // 2
        audio = _stack(heldout_clips("sound_events", n_clips - n_music, clip_seconds, rate, version)
                       + heldout_clips("music", n_music, clip_seconds, rate, version))
        for key, made in vocode(audio).items():
            metrics[f"{tag}{key}mel_db"] = round(float(log_mel_distance_db(made, audio, mel_config).mean()), 3)
        if probes:
            clips = heldout_clips("sound_events", n_clips, clip_seconds, rate, version)
            events = _stack(clips)
            rates = {"real_": adherence_rates(events, rate, clips, classifier)}
            rates.update({key: adherence_rates(made, rate, clips, classifier) for key, made in vocode(events).items()})
            for key, values in rates.items():
                metrics.update({f"{tag}{key}{name}": value for name, value in values.items()})
    if timing:
        metrics["rtf_1_thread"] = round(vocoder_rtf(model, mel_config, clip_seconds), 1)
        metrics["rtf_1_thread_cpu"] = round(vocoder_rtf(model, mel_config, clip_seconds, clock="cpu"), 1)
    return metrics


# ---- Tokenizers judged by the probes: what a listener needs, kept or lost -------------------------------------

_VERSION_PROBES: dict[tuple[str, int, float, int], torch.nn.Module] = {}  # (kind, version, seconds, rate) -> probe


#: Probe settings of the tokenizer cards, fixed before any v2 tokenizer was trained: both probes on 40 train-split
#: clips per class, 300 epochs (the event probe of :mod:`course_lib.data.probe_check`, and the instrument probe
#: the Noise2Music cards use; probe_check's full-size instrument probe takes 200 per class, five times longer).
TOKENIZER_PROBES = {"n_per_class": 40, "epochs": 300}


def version_probes(version: int, clip_seconds: float, sample_rate: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The event-class and instrument probes for data ``version``, trained on that version's train-split clips
    with :data:`TOKENIZER_PROBES`, once per process (about 20 s on one idle thread)."""
    from course_lib.data.music_probes import train_instrument_classifier
    from course_lib.data.probes import train_event_classifier

    out = []
    for kind, train_fn in (("event", train_event_classifier), ("instrument", train_instrument_classifier)):
        key = (kind, int(version), float(clip_seconds), int(sample_rate))
        if key not in _VERSION_PROBES:
            with torch.enable_grad():
                _VERSION_PROBES[key] = train_fn(**TOKENIZER_PROBES, clip_seconds=clip_seconds, sample_rate=sample_rate,
                                                version=version)
        out.append(_VERSION_PROBES[key])
    return out[0], out[1]


@torch.no_grad()
def measure_tokenizer_probes(paths: dict, n_clips: int = 48, clip_seconds: float = 4.0, versions: tuple[int, ...] = (2,),
                             sample_rate: int = 16_000, batch_size: int = 8, start: int = 0) -> dict[str, float]:
    """The course's probes on held-out test clips passed through each of ``paths`` (``{name: fn}``, ``fn`` maps
    audio ``(N, 1, T)`` at ``sample_rate`` to audio of the same shape: a codec's round trip at some number of
    codebooks, a mel VQ-VAE plus a vocoder, ...), and on the clips themselves (``real``).

    For each data ``version`` (keys prefixed ``v{version}_{name}_``): ``n_clips`` sound-event clips (class,
    count, pitch band: :func:`adherence_rates`, with the class probe of :func:`version_probes`) and ``n_clips``
    music clips (instrument, tempo, mode: :func:`music_rates`), test indices ``start …``. A probe cannot be fooled
    by the path: each is trained on real clips only."""
    if isinstance(n_clips, bool) or not isinstance(n_clips, int) or n_clips < 2:
        raise ValueError(f"n_clips must be an int >= 2, got {n_clips!r}")
    paths = {"real": lambda audio: audio, **paths}
    metrics: dict[str, float] = {}
    for version in versions:
        events_probe, instruments_probe = version_probes(version, clip_seconds, sample_rate)
        events = heldout_clips("sound_events", n_clips, clip_seconds, sample_rate, version, start)
        tunes = heldout_clips("music", n_clips, clip_seconds, sample_rate, version, start)
        for name, fn in paths.items():
            made = {}
            for kind, clips in (("events", events), ("music", tunes)):
                audio = _stack(clips)
                made[kind] = torch.cat([fn(b)[..., : b.shape[-1]].float().clamp(-1.0, 1.0)
                                        for b in audio.split(batch_size)])
            tag = f"v{version}_{name}_"
            metrics.update({tag + k: v for k, v in adherence_rates(made["events"], sample_rate, events,
                                                                   events_probe).items()})
            # the rates only: a median tempo error moves with one clip's estimate (seen: 0.543 against 0.563 bpm
            # between two float paths through Griffin-Lim), which a rate's one-clip tolerance covers and 2% does not
            metrics.update({k: v for k, v in music_rates(made["music"], sample_rate, tunes, instruments_probe,
                                                         prefix=tag).items() if not k.endswith("tempo_error_bpm")})
    return metrics


def codec_paths(model, levels: tuple[int, ...] | None = None) -> dict:
    """``{"q{n}": round trip through the first n codebooks}`` of a :class:`~course_lib.codecs.codec.Codec` for
    each ``n`` in ``levels`` (default: 1, n_q / 2 and n_q), for :func:`measure_tokenizer_probes`."""
    n_q = model.config.n_q
    levels = levels or tuple(sorted({1, max(n_q // 2, 1), n_q}))

    def through(n: int):
        return lambda audio: model.decode(model.encode(audio)[:, :n])

    return {f"q{n}": through(n) for n in levels}
