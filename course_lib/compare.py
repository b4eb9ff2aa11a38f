"""The survey's three approaches measured side by side: one held-out prompt set per domain, every shipped system.

``compare_models`` generates the same prompts with each system and measures the result the same way:

* **prompts**: sound-event prompts are the captions of test-split clips ``0 … n − 1`` of
  :mod:`course_lib.data.sound_events` (2 s), music prompts those of test-split clips ``0 … n − 1`` of
  :mod:`course_lib.data.music` (4 s, as :func:`~course_lib.pretrained.measures.measure_noise2music`);
* **systems** (:data:`SYSTEMS`): ``audiogen`` (AR LM over codec tokens, CFG 3, top-k 250), ``diffsound``
  (discrete diffusion over mel-VQ tokens, 25 steps, truncation 0.86, CFG 3, Griffin-Lim), ``diffsound_ar``
  (the same-size AR baseline over the same tokens, CFG 3, top-p 0.86) and ``noise2music`` (the 1-D U-Net
  diffusion cascade, each stage's own steps and guidance) and ``noise2music_low`` (the cascade's generator alone,
  its 3.2 kHz audio measured after plain sinc upsampling: what the cascader adds, or takes away);
* **released systems** (:data:`RELEASED_SYSTEMS`, only when their weights are on this machine): ``musicgen``, the
  released MusicGen-small (``facebook/musicgen-small``) converted into the course (:mod:`course_lib.released`: its
  decoder as an ``AudioLM``, its 32 kHz EnCodec as a ``Codec``, its T5) and sampled by the course's sampler (delay
  pattern, CFG 3, top-k 250), on the music prompts. Asked for but absent, it is skipped with a note in the table
  saying how to get it; nothing is downloaded;
* **reference rows**: ``real_events`` / ``real_music``, the prompts' own real clips (the ceiling of every
  column). FAD is measured against a *second*, disjoint real draw of ``n`` test clips from index
  :func:`reference_start` (the first multiple of 12 ≥ n: the same mix of event classes and instruments, which
  cycle with the index), so the real row's FAD is the floor FAD reaches at this ``n`` (its sample-size
  bias), not 0;
* **columns** (:data:`COLUMNS`): ``fad`` (course embedder, generated vs the reference draw), ``kl`` (paired KL of
  the course classifier's label distributions, real clip ``i`` vs generated clip ``i``, AudioGen's form),
  ``agreement`` (mean CLAP-style score of each clip with its own caption), the probes' adherence rates
  (events: class / count / pitch band; music: tempo / mode / instrument), ``seconds_per_audio_second``
  (wall clock of the pipeline's ``generate`` call only, text in to audio out, per second of audio, on this
  machine with ``num_threads`` torch threads), ``params_model`` (the generative model(s)), ``params_total``
  (+ codec / VQ-VAE / vocoder / text encoder) and ``steps`` (sequential decoding steps per second of audio
  for the LMs, ``"…/s"``; reverse steps for diffusion, ``"25+25"`` for the cascade);
* **the real-CLAP column** (``clap=True``; :data:`CLAP_COLUMN`): the mean CLAP score of each clip with its own
  caption, by the released ``laion/clap-htsat-unfused`` (:func:`course_lib.released.load_clap`), next to the
  course's ``agreement``; when its weights are absent the column is left out and the table's notes say so.

FAD, KL and agreement use the course's own models (``audio_classifier_course``, ``agreement_course``): the
numbers compare the rows of one table, never with the papers' VGGish / PaSST / CLAP numbers. Everything is
measured at 16 kHz (a pipeline at another rate is resampled). Deterministic for a fixed seed, except the
timing column. One command runs it::

    python -m course_lib.compare --out build/compare [--size quick] [--systems audiogen,diffsound] [--no-clap]

The command asks for every system, ``musicgen`` included, and for the CLAP column; each released model is found
by :func:`course_lib.released.find_weights` (``$COURSE_MUSICGEN`` / ``$COURSE_CLAP``: a folder or a hub name, else
the Hugging Face cache) or skipped with a note.
    make compare [COMPARE_ARGS="--size quick"]
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from course_lib.runtime import RUN_SIZES, configure_threads, run_size

__all__ = ["SYSTEMS", "RELEASED_SYSTEMS", "DOMAINS", "COLUMNS", "CLAP_COLUMN", "SIZES", "MEASURE_RATE",
           "INTERVAL_COLUMNS", "ComparisonResult", "compare_models", "reference_start", "disjoint_prompt_start", "main"]

MEASURE_RATE = 16_000  # every metric reads 16 kHz audio
DOMAINS = ("events", "music")
REAL_ROWS = {"events": "real_events", "music": "real_music"}

# name -> domain, generation settings (the shipped models' card settings), what it is
SYSTEMS: dict[str, dict[str, Any]] = {
    "audiogen": {"domain": "events", "settings": {"cfg_scale": 3.0, "top_k": 250, "temperature": 1.0},
                 "what": "AudioGen: AR transformer LM over RVQ codec tokens (delay pattern)"},
    "diffsound": {"domain": "events", "settings": {"steps": 25, "truncation": 0.86, "cfg_scale": 3.0},
                  "what": "Diffsound: discrete diffusion over mel VQ-VAE tokens, Griffin-Lim vocoder"},
    "diffsound_ar": {"domain": "events", "settings": {"cfg_scale": 3.0, "truncation": 0.86},
                     "what": "Diffsound's AR baseline: same-size LM over the same mel tokens, Griffin-Lim"},
    "noise2music": {"domain": "music", "settings": {},
                    "what": "Noise2Music: 1-D U-Net diffusion cascade, 3.2 kHz generator + 16 kHz cascader"},
    "noise2music_low": {"domain": "music", "settings": {},
                        "what": "Noise2Music's generator alone: its 3.2 kHz output sinc-upsampled, no cascader"},
}
# Released systems: measured only when their weights are on this machine (course_lib.released), else skipped.
RELEASED_SYSTEMS: dict[str, dict[str, Any]] = {
    "musicgen": {"domain": "music", "settings": {"cfg_scale": 3.0, "top_k": 250, "temperature": 1.0},
                 "what": "MusicGen-small (facebook/musicgen-small) converted into the course: AudioLM + Codec + T5, "
                         "sampled by the course's sampler (delay pattern)"},
}
_ALL_SYSTEMS = {**SYSTEMS, **RELEASED_SYSTEMS}

COLUMNS = ("system", "domain", "n_prompts", "audio_seconds", "fad", "kl", "agreement", "class_accuracy",
           "count_accuracy", "pitch_band_accuracy", "tempo_accuracy", "mode_accuracy", "instrument_accuracy",
           "seconds_per_audio_second", "params_model", "params_total", "steps")
TIMING_COLUMNS = ("seconds_per_audio_second",)
CLAP_COLUMN = "clap"  # the real CLAP score, a column only when clap=True and its weights are found
_EVENT_RATES = ("class_accuracy", "count_accuracy", "pitch_band_accuracy")
_MUSIC_RATES = ("tempo_accuracy", "mode_accuracy", "instrument_accuracy")
# Columns with a 95% interval (percentile bootstrap over the prompts: each is a mean of per-prompt values) and
# which way is better. FAD has none: it is a statistic of the whole set, and a resampled set holds repeated
# clips, which FAD reads as a narrower distribution (at 8 prompts the real row's FAD of 87 gave a "95%
# interval" of 96-400, excluding itself); lesson 08's FAD-infinity is the way to compare FADs across sizes.
INTERVAL_COLUMNS = ("kl", "agreement", *_EVENT_RATES, *_MUSIC_RATES)
LOWER_IS_BETTER = ("fad", "kl")
BOOTSTRAP_RESAMPLES = 500
# Below this many prompts the table states no claim: a bootstrap over 2 or 4 prompts sees too few distinct
# resamples to tell a difference from noise (at 2 prompts its interval is about [min, max]).
MIN_PROMPTS_FOR_CLAIMS = 8

# run size -> prompts per domain and clip lengths in seconds
SIZES: dict[str, dict[str, Any]] = {
    "default": {"n_prompts": 16, "event_seconds": 2.0, "music_seconds": 4.0},
    "quick": {"n_prompts": 4, "event_seconds": 2.0, "music_seconds": 4.0},
}
BATCH_SIZE = 8


# ---- the result --------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _plain_tick(value: float, _pos: Any = None, only: tuple[int, ...] | None = None) -> str:
    """A log-axis tick as a plain number; with ``only``, just the ticks whose leading digit is in it."""
    if value <= 0:
        return ""
    lead = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
    return f"{value:g}" if only is None or lead in only else ""


@dataclass
class ComparisonResult:
    """What :func:`compare_models` measured.

    ``rows``: one dict per system and reference row, keys :data:`COLUMNS` in that order (``None`` where a
    column does not apply, e.g. music probes on a sound-event row, or timing on a real row). ``audio``:
    system → ``(N, T)`` float32 clips at ``sample_rates[system]`` Hz (the real rows too). ``prompts``:
    domain → the ``N`` captions. ``settings``: how it was run (what ``settings.json`` holds).
    ``run_seconds``: wall-clock time of the whole comparison. ``columns``: the keys of each row, :data:`COLUMNS`
    plus :data:`CLAP_COLUMN` when the real CLAP score was measured. ``skipped``: what was asked for but not run
    (``"musicgen"``, ``"clap"``) → why, and how to get it.
    """

    rows: list[dict[str, Any]]
    audio: dict[str, Tensor]
    sample_rates: dict[str, int]
    prompts: dict[str, list[str]]
    settings: dict[str, Any] = field(default_factory=dict)
    run_seconds: float = 0.0
    columns: tuple[str, ...] = COLUMNS
    skipped: dict[str, str] = field(default_factory=dict)
    intervals: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)

    def separated(self, a: str, b: str, column: str) -> bool:
        """Whether rows ``a`` and ``b`` differ in ``column`` by more than chance: their 95% intervals do not
        overlap (a conservative test: overlapping intervals may still differ, but then this table cannot say).
        Never with fewer than :data:`MIN_PROMPTS_FOR_CLAIMS` prompts."""
        ia, ib = self.intervals.get(a, {}).get(column), self.intervals.get(b, {}).get(column)
        if ia is None or ib is None or self.settings.get("n_prompts", 0) < MIN_PROMPTS_FOR_CLAIMS:
            return False
        return ia[1] < ib[0] or ib[1] < ia[0]

    def better(self, a: str, b: str, column: str) -> bool:
        """Whether row ``a`` is better than row ``b`` in ``column`` beyond chance (separated, and on the better
        side: lower for :data:`LOWER_IS_BETTER`, higher for the rest)."""
        if not self.separated(a, b, column):
            return False
        va, vb = self.row(a)[column], self.row(b)[column]
        return va < vb if column in LOWER_IS_BETTER else va > vb

    def ranking(self, column: str, domain: str) -> list[str]:
        """The generated systems of ``domain`` from best to worst in ``column`` by value (real rows left out)."""
        rows = [r for r in self.rows if r["domain"] == domain and r["system"] not in REAL_ROWS.values()
                and r.get(column) is not None]
        return [r["system"] for r in sorted(rows, key=lambda r: r[column], reverse=column not in LOWER_IS_BETTER)]

    def claims(self, columns: Sequence[str] = INTERVAL_COLUMNS) -> list[tuple[str, str, str]]:
        """Every ``(better, worse, column)`` this table supports: pairs of generated systems of one domain whose
        intervals separate. The only strengths and weaknesses a write-up of this table should state."""
        out = []
        for column in columns:
            for domain in DOMAINS:
                ranked = self.ranking(column, domain)
                out += [(a, b, column) for i, a in enumerate(ranked) for b in ranked[i + 1:]
                        if self.better(a, b, column)]
        return out

    def contradictions(self, other: ComparisonResult, columns: Sequence[str] = INTERVAL_COLUMNS) -> list[str]:
        """Claims of this table that ``other`` (e.g. the same systems on a disjoint prompt set) reverses: ``a``
        better than ``b`` here beyond chance, but ``b`` ahead of ``a`` by value there. Empty: the comparison
        stands on both prompt sets."""
        problems = []
        for a, b, column in self.claims(columns):
            try:
                va, vb = other.row(a)[column], other.row(b)[column]
            except KeyError:
                continue
            if va is None or vb is None:
                continue
            reversed_there = va > vb if column in LOWER_IS_BETTER else va < vb
            if reversed_there:
                problems.append(f"{column}: {a} beats {b} here ({self.row(a)[column]} vs {self.row(b)[column]}), "
                                f"but not on the other prompt set ({va} vs {vb})")
        return problems

    def row(self, system: str) -> dict[str, Any]:
        """The row of ``system`` (a name of :attr:`rows`); ``KeyError`` lists the names there are."""
        for r in self.rows:
            if r["system"] == system:
                return r
        raise KeyError(f"no row {system!r}; rows: {[r['system'] for r in self.rows]}")

    def markdown(self, columns: Sequence[str] | None = None) -> str:
        """The table as markdown (one line per row), with a note on what the numbers can be compared with.

        ``columns``: which of :attr:`columns` to show, in that order (None: all 17, or 18 with the CLAP column,
        which is wide; a notebook may show fewer). Released systems or a CLAP column that were asked for but skipped
        get a note each, with the command that fetches their weights."""
        columns = self.columns if columns is None else tuple(columns)
        unknown = [c for c in columns if c not in self.columns]
        if unknown or not columns:
            problem = f"unknown columns {unknown}" if unknown else "name at least one column"
            raise ValueError(f"markdown(columns=...): {problem}; the columns are {self.columns}")
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(self._cell(r, c) for c in columns) + " |" for r in self.rows]
        s = self.settings
        n, ev, mu = s.get("n_prompts"), s.get("event_seconds"), s.get("music_seconds")
        notes = [
            "",
            f"{n} prompts per domain (sound events {ev} s, music {mu} s), seed {s.get('seed')}. "
            "fad ↓, kl ↓ (nats), agreement ↑ (cosine), *_accuracy ↑ (probe adherence); kl and agreement with their "
            f"95% interval [low, high] (percentile bootstrap over the prompts, {s.get('bootstrap_resamples')} "
            "resamples), the accuracies with Wilson's: a row beats another only where the intervals do not overlap "
            f"(`claims()`, and only from {MIN_PROMPTS_FOR_CLAIMS} prompts up); FAD gets no interval (a resampled set "
            "repeats clips, which biases FAD) and no claim; "
            f"seconds_per_audio_second ↓ (generation only, {s.get('num_threads')} thread(s), this machine).",
            "FAD, KL and agreement are measured with the course's own models (`audio_classifier_course`, "
            "`agreement_course`): comparable between the rows of this table, **not** with the papers' "
            "VGGish / PaSST / CLAP numbers.",
            f"`real_*` rows: the prompts' own real clips (test clips 0…{n - 1 if isinstance(n, int) else 'n-1'}). "
            f"FAD is always against a second real draw with the same class mix (test clips {s.get('fad_reference')}),"
            " so the real row's FAD is the floor at this n; its KL is 0 by construction (each clip against itself).",
        ]
        released = s.get("released", {})
        if "musicgen" in released:
            notes.append(f"`musicgen` row: {released['musicgen']}, converted into the course (AudioLM + Codec + T5) "
                         "and sampled by the course's sampler; its 32 kHz audio is measured at 16 kHz.")
        if CLAP_COLUMN in self.columns:
            notes.append(f"`clap` ↑: the mean CLAP score of each clip with its own caption, by {released.get('clap')} "
                         "(a real CLAP, but on synthetic course audio and captions: not the papers' setting).")
        notes += [f"Skipped `{name}`: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines + notes) + "\n"

    def _cell(self, row: dict[str, Any], column: str) -> str:
        interval = self.intervals.get(row["system"], {}).get(column)
        if interval is None or row[column] is None:
            return _fmt(row[column])
        return f"{_fmt(row[column])} [{_fmt(_clean(interval[0], 3))}, {_fmt(_clean(interval[1], 3))}]"

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write :attr:`rows` as CSV (header :attr:`columns`; empty cells where a column does not apply)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            for r in self.rows:
                writer.writerow({c: "" if r[c] is None else r[c] for c in self.columns})
        return path

    def plot(self):
        """Quality against generation time: a ``matplotlib.figure.Figure`` with two panels, FAD (left) and the
        main probe's adherence (right: class accuracy for sound events, instrument accuracy for music) against
        ``seconds_per_audio_second`` (log x), one labelled point per system; the real rows are dashed
        horizontal lines (FAD floor, adherence ceiling)."""
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter

        fig = Figure(figsize=(10, 4), layout="constrained")
        axes = fig.subplots(1, 2)
        colours = {"events": "tab:blue", "music": "tab:orange"}
        main_rate = {"events": "class_accuracy", "music": "instrument_accuracy"}
        for ax, what in zip(axes, ("fad", "adherence")):
            for i, r in enumerate(self.rows):
                key = "fad" if what == "fad" else main_rate[r["domain"]]
                y = r.get(key)
                if y is None:
                    continue
                colour = colours[r["domain"]]
                if r["seconds_per_audio_second"] is None:  # a real row
                    ax.axhline(y, color=colour, linestyle="--", linewidth=1,
                               label=f"{r['system']} ({'floor' if what == 'fad' else 'ceiling'})")
                    continue
                x = r["seconds_per_audio_second"]
                ax.scatter([x], [y], color=colour, zorder=3)
                ax.annotate(r["system"], (x, y), textcoords="offset points", xytext=(5, 4 if i % 2 else -11),
                            fontsize=9)
            ax.set_xscale("log")
            ax.margins(x=0.2, y=0.12)
            ax.xaxis.set_major_formatter(FuncFormatter(_plain_tick))  # 0.2, 1, 5 rather than 2×10⁻¹
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, pos: _plain_tick(v, pos, only=(2, 5))))
            ax.set_xlabel("generation time per second of audio (s, log)")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="best")
        axes[0].set_ylabel("FAD (course embedder) ↓")
        axes[0].set_title("distance to real audio vs time")
        axes[1].set_ylabel("prompt adherence ↑ (class / instrument probe)")
        axes[1].set_ylim(-0.05, 1.05)
        axes[1].set_title("prompt adherence vs time")
        return fig

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``comparison.md``, ``comparison.csv``, ``comparison.png`` and ``settings.json`` into
        ``out_dir`` (created); return it."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.md").write_text(self.markdown())
        self.to_csv(out / "comparison.csv")
        self.plot().savefig(out / "comparison.png", dpi=120)
        settings = {**self.settings, "run_seconds": round(self.run_seconds, 2), "prompts": self.prompts,
                    "sample_rates": self.sample_rates, "skipped": self.skipped,
                    "intervals": {k: {c: list(v) for c, v in cols.items()} for k, cols in self.intervals.items()}}
        (out / "settings.json").write_text(json.dumps(settings, indent=2))
        return out


# ---- loading and checking the systems ----------------------------------------------------------------------------


def _load_system(name: str, weights: Any = None) -> Any:
    """The shipped pipeline of ``name`` (:data:`SYSTEMS`), on the CPU; for a released system
    (:data:`RELEASED_SYSTEMS`) the pipeline converted from ``weights`` (a :class:`course_lib.released.Weights`)."""
    from course_lib.pipelines import AudioGenPipeline, DiffsoundPipeline, Noise2MusicPipeline

    if name == "musicgen":
        from course_lib.released import load_musicgen

        pipe, _ = load_musicgen(weights)  # transformers' model is dropped: the pipeline shares only its T5
        return pipe
    if name == "audiogen":
        return AudioGenPipeline.from_pretrained()
    if name == "diffsound":
        return DiffsoundPipeline.from_pretrained()
    if name == "diffsound_ar":
        return DiffsoundPipeline.from_pretrained(decoder="diffsound_ar_course")
    if name == "noise2music_low":
        return Noise2MusicPipeline.from_pretrained(cascader=None)
    return Noise2MusicPipeline.from_pretrained()


def _generate_fn(name: str, pipe: Any) -> tuple[Any, int]:
    """The function that generates for system ``name`` and the rate of its audio: ``pipe.generate`` at
    ``pipe.sample_rate``, or, for ``noise2music_low``, the generator alone (``generate_low`` at ``low_rate``)."""
    if name == "noise2music_low":
        return pipe.generate_low, int(pipe.low_rate)
    return pipe.generate, int(pipe.sample_rate)


def _check_pipeline(name: str, pipe: Any) -> None:
    """Raise ``TypeError`` if ``pipe`` is not the kind of pipeline system ``name`` is."""
    from course_lib.pipelines import AudioGenPipeline, DiffsoundPipeline, Noise2MusicPipeline

    want = {"audiogen": AudioGenPipeline, "musicgen": AudioGenPipeline, "diffsound": DiffsoundPipeline,
            "diffsound_ar": DiffsoundPipeline, "noise2music": Noise2MusicPipeline,
            "noise2music_low": Noise2MusicPipeline}[name]
    if not isinstance(pipe, want):
        raise TypeError(f"pipelines[{name!r}] must be an instance of {want.__name__}, got a {type(pipe).__name__}")
    if name == "diffsound" and pipe.is_autoregressive:
        raise TypeError("pipelines['diffsound'] holds the AR baseline (an AudioLM decoder): pass it as 'diffsound_ar'")
    if name == "diffsound_ar" and not pipe.is_autoregressive:
        raise TypeError("pipelines['diffsound_ar'] must hold the AR baseline (an AudioLM decoder), got a "
                        "DiffsoundModel: pass that one as 'diffsound'")
    if name == "noise2music" and (pipe.generator is None or pipe.cascader is None):
        raise TypeError("pipelines['noise2music'] needs both stages (generator and cascader)")
    if name == "noise2music_low" and pipe.generator is None:
        raise TypeError("pipelines['noise2music_low'] needs a generator")


def _check_settings(name: str, pipe: Any, settings: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` if ``settings`` holds a keyword that ``pipe.generate`` does not take."""
    import inspect

    generate, _ = _generate_fn(name, pipe)
    allowed = [p for p in inspect.signature(generate).parameters if p not in ("self", "prompts", "seconds", "seed")]
    bad = sorted(set(settings) - set(allowed))
    if bad:
        raise ValueError(f"settings for {name!r} has {bad}, which {type(pipe).__name__}.generate does not take; "
                         f"it takes {allowed} (prompts, seconds and seed are set by the harness)")


def _count(*modules: Any) -> int:
    """Parameters of ``modules`` (each counted once, shared tensors once)."""
    seen: dict[int, int] = {}
    for m in modules:
        if m is not None:
            for p in m.parameters():
                seen[id(p)] = p.numel()
    return sum(seen.values())


def _params(name: str, pipe: Any) -> tuple[int, int]:
    """``(params_model, params_total)`` of a pipeline: the generative model(s), and everything it holds."""
    if name in ("audiogen", "musicgen"):
        return _count(pipe.lm), _count(pipe.lm, pipe.codec, pipe.text_encoder)
    if name in ("diffsound", "diffsound_ar"):
        return _count(pipe.decoder), _count(pipe.decoder, pipe.vqvae, pipe.vocoder, pipe.text_encoder)
    if name == "noise2music_low":
        return _count(pipe.generator), _count(pipe.generator, pipe.text_encoder)
    return _count(pipe.generator, pipe.cascader), _count(pipe.generator, pipe.cascader, pipe.text_encoder)


def _steps(name: str, pipe: Any, seconds: float, settings: Mapping[str, Any]) -> str:
    """Sequential steps: decoding steps per second of audio for the LMs, reverse steps for diffusion."""
    if name in ("audiogen", "musicgen"):
        return f"{round(pipe.lm.pattern.seq_len(pipe.num_frames(seconds)) / seconds, 1):g}/s"
    if name == "diffsound_ar":
        return f"{round(pipe.grid_rows * pipe.num_cols(seconds) / seconds, 1):g}/s"
    if name == "diffsound":
        return str(settings.get("steps") or pipe.decoder.num_steps)
    gen = settings.get("steps") or pipe.generator.config.diffusion.num_steps
    if name == "noise2music_low":
        return str(gen)
    casc = settings.get("casc_steps") or pipe.cascader.config.diffusion.num_steps
    return f"{gen}+{casc}"


# ---- measuring ---------------------------------------------------------------------------------------------------


def _fixed_length(audio: Tensor, rate: int, seconds: float) -> Tensor:
    """``(N, 1, T)`` or ``(N, T)`` audio at ``rate`` → ``(N, T16)`` float32 at 16 kHz, ``T16 = round(seconds·16000)``
    (resampled if needed, then cropped or zero-padded)."""
    from course_lib.audio import resample

    wav = audio.detach().float().cpu()
    wav = wav[:, 0] if wav.dim() == 3 else wav
    if int(rate) != MEASURE_RATE:
        wav = resample(wav, int(rate), MEASURE_RATE)
    n = round(seconds * MEASURE_RATE)
    return torch.nn.functional.pad(wav[:, :n], (0, max(0, n - wav.shape[1])))


def _clean(value: float, digits: int) -> float:
    return round(float(value), digits) + 0.0  # + 0.0 turns -0.0 into 0.0


def _per_prompt(audio: Tensor, domain: str, ctx: dict[str, Any]) -> dict[str, np.ndarray]:
    """What each prompt's clip scores, ``(N,)`` arrays: ``kl``, ``agreement`` (and ``clap``), each probe's
    hit as 1.0 / 0.0 (NaN where the prompt does not state that attribute), and the clips' ``embeddings``
    ``(N, D)`` for FAD."""
    from course_lib.data.music_probes import music_adherence
    from course_lib.data.probes import adherence
    from course_lib.metrics.agreement import agreement_score
    from course_lib.metrics.kl import paired_kl

    d = ctx[domain]
    embedder = ctx["embedder"]
    out = {"embeddings": np.asarray(embedder.embed(audio, MEASURE_RATE), dtype=np.float64),
           "kl": paired_kl(d["real_proba"], embedder.predict_proba(audio, MEASURE_RATE), reduction="none").numpy(),
           "agreement": agreement_score(ctx["agreement"], audio, d["captions"], MEASURE_RATE).double().numpy()}
    if ctx.get("clap") is not None:
        out[CLAP_COLUMN] = agreement_score(ctx["clap"], audio, d["captions"], MEASURE_RATE).double().numpy()
    check = adherence if domain == "events" else music_adherence
    checks = [check(a.cpu().numpy(), MEASURE_RATE, c.attributes, d["probe"]) for a, c in zip(audio, d["clips"])]
    for column in (_EVENT_RATES if domain == "events" else _MUSIC_RATES):
        key = column.removesuffix("_accuracy")
        out[column] = np.array([float(r[key]) if key in r else np.nan for r in checks])
    return out


def _statistics(items: dict[str, np.ndarray], reference: Any, index: np.ndarray | None = None) -> dict[str, Any]:
    """The table's columns from per-prompt values; with ``index`` (a resample of the prompts, with repeats) all but
    FAD, which has no interval (see :data:`INTERVAL_COLUMNS`)."""
    from course_lib.metrics.fad import fad

    pick = (lambda v: v) if index is None else (lambda v: v[index])
    out: dict[str, Any] = {} if index is not None else {"fad": fad(items["embeddings"], reference)}
    for key, values in items.items():
        if key == "embeddings":
            continue
        chosen = pick(values)
        out[key] = float(np.nanmean(chosen)) if np.isfinite(chosen).any() else None
    return out


def _measure(audio: Tensor, domain: str, ctx: dict[str, Any],
             resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[dict[str, Any], dict[str, tuple[float, float]]]:
    """The table's columns for 16 kHz clips ``(N, T)`` against domain ``domain``'s prompts, and their 95%
    intervals (:data:`INTERVAL_COLUMNS`): for KL and agreement (means of per-prompt values) the percentile
    bootstrap over the prompts, ``resamples`` draws seeded by the domain, so reruns agree; for a probe rate (a
    share of prompts) Wilson's interval, which stays honest at a handful of prompts."""
    from course_lib.metrics.intervals import wilson_interval

    items = _per_prompt(audio, domain, ctx)
    reference = ctx[domain]["reference_embeddings"]
    point = _statistics(items, reference)
    rng = np.random.default_rng(0 if domain == "events" else 1)
    n = audio.shape[0]
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        for key, value in _statistics(items, reference, rng.integers(0, n, n)).items():
            if value is not None:
                draws.setdefault(key, []).append(value)
    # rounded like the values (4 decimals), so a column and its interval read alike
    intervals = {key: (_clean(np.percentile(v, 2.5), 4), _clean(np.percentile(v, 97.5), 4))
                 for key, v in draws.items() if key in INTERVAL_COLUMNS or key == CLAP_COLUMN}
    for key in (_EVENT_RATES if domain == "events" else _MUSIC_RATES):  # a share of prompts: Wilson's interval
        hits = items[key][np.isfinite(items[key])]
        if hits.size:
            low, high = wilson_interval(int(hits.sum()), int(hits.size))
            intervals[key] = (_clean(low, 4), _clean(high, 4))
    row = {key: None if value is None else _clean(value, 4) for key, value in point.items()}
    return row, intervals


def reference_start(n_prompts: int, prompt_start: int = 0) -> int:
    """First test-split index of the FAD reference draw: the first multiple of 12 at or after the prompts' last
    clip ``prompt_start + n_prompts − 1``, so the draw is disjoint from the prompts' clips and holds the same mix
    of sound-event classes (12, cycling with the index) and instruments (6, cycling with the index)."""
    return 12 * math.ceil((prompt_start + n_prompts) / 12)


def disjoint_prompt_start(n_prompts: int) -> int:
    """Where a second prompt set of ``n_prompts`` starts so that it, its FAD reference draw, and the first set
    (from 0) with its reference draw share no clip: just after the first set's reference draw."""
    return reference_start(n_prompts) + 12 * math.ceil(n_prompts / 12)


def _domain_context(domain: str, n: int, seconds: float, embedder: Any, start: int = 0) -> dict[str, Any]:
    """Prompts (test clips ``start … start+n−1``), the reference draw (``n`` clips from :func:`reference_start`) embedded,
    the prompts' real clips'
    label distributions, and the domain's adherence probe."""
    from course_lib.data import music, sound_events
    from course_lib.pretrained.measures import event_probe, instrument_probe

    source = sound_events if domain == "events" else music
    clips = list(source.generate_clips("test", n, seconds, MEASURE_RATE, start=start))
    reference = list(source.generate_clips("test", n, seconds, MEASURE_RATE, start=reference_start(n, start)))
    real = torch.from_numpy(np.stack([c.audio for c in clips])).float()
    ref = torch.from_numpy(np.stack([c.audio for c in reference])).float()
    probe = (event_probe if domain == "events" else instrument_probe)(float(seconds), MEASURE_RATE)
    return {"clips": clips, "captions": [c.caption for c in clips], "real": real, "seconds": seconds,
            "reference_embeddings": embedder.embed(ref, MEASURE_RATE),
            "real_proba": embedder.predict_proba(real, MEASURE_RATE), "probe": probe}


def _positive_int(value: Any, name: str, minimum: int = 1, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{why}, got {value!r}")
    return int(value)


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1.0 <= value <= 60.0:
        raise ValueError(f"{name} must be a number of seconds in [1, 60] (the course generators' clip lengths), "
                         f"got {value!r}")
    return float(value)


def _check_systems(systems: Any) -> list[str]:
    if isinstance(systems, str):
        systems = [s for s in systems.split(",") if s.strip()]
    if not isinstance(systems, (list, tuple)) or not systems:
        raise ValueError(f"systems must be a non-empty list of names from {list(_ALL_SYSTEMS)}, got {systems!r}")
    names = [str(s).strip() for s in systems]
    unknown = [s for s in names if s not in _ALL_SYSTEMS]
    if unknown:
        raise ValueError(f"unknown system(s) {unknown}; valid systems: {list(_ALL_SYSTEMS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"systems lists a name twice: {names}")
    return names


def _find_released(names: Sequence[str], pipelines: Mapping[str, Any], clap: bool,
                   released: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """``(weights, skipped, provenance)`` for the released models asked for: ``"musicgen"`` in ``names`` without
    a pipeline given, and ``"clap"`` when ``clap``. ``weights``: name → found :class:`course_lib.released.Weights`;
    ``skipped``: name → why not, with the command that fetches it; ``provenance``: name → what was used."""
    from course_lib.released import ENV_VARS, RELEASED, download_command, find_weights

    released = dict(released or {})
    bad = sorted(set(released) - {"musicgen", "clap"})
    if bad:
        raise ValueError(f"released has unknown name(s) {bad}; it takes 'musicgen' and 'clap' (a folder or hub name)")
    wanted = [n for n in ("musicgen",) if n in names and n not in pipelines] + (["clap"] if clap else [])
    found = find_weights({n: released.get(n) for n in wanted}, names=wanted) if wanted else {}
    weights, skipped, provenance = {}, {}, {}
    for name, w in found.items():
        if w.found:
            weights[name], provenance[name] = w, f"`{w.source}` ({w.note})"
        else:
            skipped[name] = (f"{w.note}; get {RELEASED[name]} with `{download_command([name])}` (or name a local "
                             f"folder in ${ENV_VARS[name]})")
    if "musicgen" in names and "musicgen" in pipelines:
        provenance["musicgen"] = "the pipeline passed in `pipelines`"
    return weights, skipped, provenance


def compare_models(systems: Sequence[str] = ("audiogen", "diffsound", "diffsound_ar", "noise2music", "noise2music_low"),
                   n_prompts: int | None = None, size: str | None = None, seed: int = 0, progress: bool = True,
                   pipelines: Mapping[str, Any] | None = None, *, event_seconds: float | None = None,
                   music_seconds: float | None = None, settings: Mapping[str, Mapping[str, Any]] | None = None,
                   batch_size: int = BATCH_SIZE, num_threads: int | None = 1, embedder: Any = "course",
                   agreement_model: Any = "course", clap: bool = False,
                   released: Mapping[str, str | os.PathLike | None] | None = None, prompt_start: int = 0,
                   bootstrap_resamples: int = BOOTSTRAP_RESAMPLES) -> ComparisonResult:
    """Generate one held-out prompt set per domain with each system and measure every result the same way.

    ``systems``: names from :data:`SYSTEMS` (sound events: ``audiogen``, ``diffsound``, ``diffsound_ar``;
    music: ``noise2music``). ``size`` (``"default"`` / ``"quick"``; None = ``$COURSE_RUN_SIZE``) picks
    :data:`SIZES`: the prompts per domain ``n_prompts`` (≥ 2: FAD needs a covariance) and the clip lengths
    ``event_seconds`` / ``music_seconds``; any of the three given here wins. ``pipelines`` maps a system name
    to a ready pipeline object (an ``AudioGenPipeline``, a ``DiffsoundPipeline`` with the Diffsound or the AR
    decoder, a ``Noise2MusicPipeline`` with both stages), used instead of loading the shipped one; names not
    in ``systems`` are ignored. ``settings`` maps a system name to generation keyword arguments that replace
    its defaults (e.g. ``{"noise2music": {"steps": 10}}``). Batches of ``batch_size`` prompts, batch ``b``
    seeded ``seed + b``; ``num_threads`` torch threads while it runs (restored after; None = unchanged).
    ``embedder`` / ``agreement_model``: specs for :func:`~course_lib.metrics.embeddings.load_audio_embedder`
    (needs ``predict_proba`` for KL) and :func:`~course_lib.metrics.agreement.load_agreement_model`.
    ``progress``: a tqdm bar over (system, batch). ``prompt_start``: the prompts are test clips ``prompt_start …
    prompt_start + n − 1`` (:func:`disjoint_prompt_start` gives a second set that shares no clip with the first:
    the same comparison must rank the systems the same way on both, :meth:`ComparisonResult.contradictions`).
    ``bootstrap_resamples``: draws of the percentile bootstrap behind each 95% interval
    (:attr:`ComparisonResult.intervals`).

    Released models (:mod:`course_lib.released`; nothing is downloaded): ``"musicgen"`` in ``systems`` adds the
    row of MusicGen-small converted into the course and sampled by the course's sampler (music prompts);
    ``clap=True`` adds the column :data:`CLAP_COLUMN`, the real CLAP score. Their weights are found by
    :func:`course_lib.released.find_weights` from ``released`` (``{"musicgen": folder or hub name, "clap": ...}``;
    missing keys: ``$COURSE_MUSICGEN`` / ``$COURSE_CLAP``, then the Hugging Face cache); a pipeline in
    ``pipelines["musicgen"]`` is used as it is. Whatever is not found is skipped, and
    :attr:`ComparisonResult.skipped` (and the markdown's notes) say why and how to get it.
    Returns a :class:`ComparisonResult`; the same arguments give the same numbers, except
    ``seconds_per_audio_second``.
    """
    from tqdm.auto import tqdm

    from course_lib.metrics.agreement import load_agreement_model
    from course_lib.metrics.embeddings import load_audio_embedder

    t_start = time.perf_counter()
    names = _check_systems(systems)
    if size is None:
        size = run_size()
    if size not in SIZES:
        raise ValueError(f"size must be one of {RUN_SIZES} (or None for $COURSE_RUN_SIZE), got {size!r}")
    n = _positive_int(SIZES[size]["n_prompts"] if n_prompts is None else n_prompts, "n_prompts", 2,
                      " (FAD fits a covariance to each set, which needs at least 2 clips)")
    seconds = {"events": _seconds(SIZES[size]["event_seconds"] if event_seconds is None else event_seconds,
                                  "event_seconds"),
               "music": _seconds(SIZES[size]["music_seconds"] if music_seconds is None else music_seconds,
                                 "music_seconds")}
    _positive_int(seed, "seed", 0)
    prompt_start = _positive_int(prompt_start, "prompt_start", 0)
    bootstrap_resamples = _positive_int(bootstrap_resamples, "bootstrap_resamples", 20)
    batch_size = _positive_int(batch_size, "batch_size")
    pipelines = dict(pipelines or {})
    bad = [k for k in pipelines if k not in _ALL_SYSTEMS]
    if bad:
        raise ValueError(f"pipelines has unknown system name(s) {bad}; valid systems: {list(_ALL_SYSTEMS)}")
    for name in names:
        if name in pipelines:
            _check_pipeline(name, pipelines[name])
    overrides = {k: dict(v) for k, v in (settings or {}).items()}
    bad = [k for k in overrides if k not in _ALL_SYSTEMS]
    if bad:
        raise ValueError(f"settings has unknown system name(s) {bad}; valid systems: {list(_ALL_SYSTEMS)}")
    weights, skipped, provenance = _find_released(names, pipelines, clap, released)
    names = [name for name in names if name not in skipped]
    gen_settings = {name: {**_ALL_SYSTEMS[name]["settings"], **overrides.get(name, {})} for name in names}
    domains = [d for d in DOMAINS if any(_ALL_SYSTEMS[s]["domain"] == d for s in names)]

    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(_positive_int(num_threads, "num_threads"))
    try:
        with torch.no_grad():
            pipes = {name: pipelines[name] if name in pipelines else _load_system(name, weights.get(name))
                     for name in names}  # fail fast
            for name in names:
                _check_settings(name, pipes[name], gen_settings[name])
            emb = load_audio_embedder(embedder)
            ctx: dict[str, Any] = {"embedder": emb, "agreement": load_agreement_model(agreement_model)}
            if "clap" in weights:
                from course_lib.released import load_clap

                ctx["clap"] = load_clap(weights["clap"])
            for domain in domains:
                ctx[domain] = _domain_context(domain, n, seconds[domain], emb, prompt_start)
            n_batches = math.ceil(n / batch_size)
            bar = tqdm(total=n_batches * len(names), disable=not progress, desc="compare", leave=False)
            rows, audio, rates, intervals = {}, {}, {}, {}
            for name in names:
                domain = _ALL_SYSTEMS[name]["domain"]
                d, secs, kwargs = ctx[domain], seconds[domain], gen_settings[name]
                pipe = pipes[name]
                generate, rate = _generate_fn(name, pipe)
                clips, elapsed = [], 0.0
                for b in range(n_batches):
                    bar.set_postfix_str(f"{name} batch {b + 1}/{n_batches}")
                    captions = d["captions"][b * batch_size:(b + 1) * batch_size]
                    t0 = time.perf_counter()
                    out = generate(captions, seconds=secs, seed=seed + b, **kwargs)
                    elapsed += time.perf_counter() - t0
                    clips.append(out.detach().float().cpu().reshape(out.shape[0], -1))
                    bar.update(1)
                generated = torch.cat(clips)
                audio[name], rates[name] = generated, rate
                model_params, total_params = _params(name, pipe)
                measured, intervals[name] = _measure(_fixed_length(generated, rate, secs), domain, ctx,
                                                     bootstrap_resamples)
                rows[name] = {"system": name, "domain": domain, "n_prompts": n, "audio_seconds": secs, **measured,
                              "seconds_per_audio_second": _clean(elapsed / (n * secs), 4),
                              "params_model": model_params, "params_total": total_params,
                              "steps": _steps(name, pipe, secs, kwargs)}
            bar.close()
            for domain in domains:
                real = REAL_ROWS[domain]
                audio[real], rates[real] = ctx[domain]["real"], MEASURE_RATE
                measured, intervals[real] = _measure(ctx[domain]["real"], domain, ctx, bootstrap_resamples)
                rows[real] = {"system": real, "domain": domain, "n_prompts": n, "audio_seconds": seconds[domain],
                              **measured, "seconds_per_audio_second": None,
                              "params_model": None, "params_total": None, "steps": None}
    finally:
        torch.set_num_threads(threads_before)

    ordered = []
    for domain in domains:
        ordered += [name for name in names if _ALL_SYSTEMS[name]["domain"] == domain] + [REAL_ROWS[domain]]
    columns = COLUMNS + ((CLAP_COLUMN,) if "clap" in ctx else ())
    table = [{c: rows[name].get(c) for c in columns} for name in ordered]
    run_settings = {
        "systems": names, "size": size, "n_prompts": n, "event_seconds": seconds["events"],
        "music_seconds": seconds["music"], "seed": seed, "batch_size": batch_size,
        "num_threads": num_threads if num_threads is not None else threads_before,
        "generation": gen_settings, "injected_pipelines": sorted(k for k in pipelines if k in names),
        "prompts_from": f"test split, clips {prompt_start}…{prompt_start + n - 1}", "prompt_start": prompt_start,
        "fad_reference": f"{reference_start(n, prompt_start)}…{reference_start(n, prompt_start) + n - 1}",
        "bootstrap_resamples": bootstrap_resamples,
        "embedder": str(embedder), "agreement_model": str(agreement_model), "measure_rate": MEASURE_RATE,
        "released": provenance,
        "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}",
    }
    return ComparisonResult(rows=table, audio={k: audio[k] for k in ordered},
                            sample_rates={k: rates[k] for k in ordered},
                            prompts={d: list(ctx[d]["captions"]) for d in domains}, settings=run_settings,
                            run_seconds=time.perf_counter() - t_start, columns=columns, skipped=skipped,
                            intervals={k: {c: v for c, v in intervals[k].items() if c in columns} for k in ordered})


# ---- command line ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> ComparisonResult:
    """``python -m course_lib.compare --out DIR [--size quick|default] [--systems a,b] [--n-prompts N] [--seed S]
    [--no-clap]``: run :func:`compare_models` (by default every system, ``musicgen`` included, and the real-CLAP
    column, each skipped with a note where its weights are not on this machine), print the markdown table and the
    total run time, write the files into ``DIR``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m course_lib.compare",
                                     description="Generate held-out prompts with every shipped system and measure "
                                                 "FAD, KL, agreement, probe adherence, time, parameters and steps.")
    parser.add_argument("--out", required=True, help="folder for comparison.md/.csv/.png and settings.json")
    parser.add_argument("--size", choices=RUN_SIZES, default=None, help="default: $COURSE_RUN_SIZE, else 'default'")
    parser.add_argument("--systems", default=",".join(_ALL_SYSTEMS),
                        help=f"comma-separated, from {','.join(_ALL_SYSTEMS)} (musicgen only where its weights are "
                             "found: $COURSE_MUSICGEN or the Hugging Face cache; else skipped with a note)")
    parser.add_argument("--no-clap", action="store_true",
                        help="leave out the real-CLAP column (by default measured where laion/clap-htsat-unfused is "
                             "found: $COURSE_CLAP or the Hugging Face cache; else skipped with a note)")
    parser.add_argument("--n-prompts", type=int, default=None, help="prompts per domain (>= 2)")
    parser.add_argument("--event-seconds", type=float, default=None)
    parser.add_argument("--music-seconds", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt-start", type=int, default=0,
                        help="first test clip of the prompts (course_lib.compare.disjoint_prompt_start gives a second, "
                             "disjoint set)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (the timing column depends on it; default: $COURSE_NUM_THREADS, else 1)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = compare_models(args.systems, n_prompts=args.n_prompts, size=args.size, seed=args.seed,
                                progress=not args.no_progress, event_seconds=args.event_seconds,
                                music_seconds=args.music_seconds, num_threads=configure_threads(args.threads),
                                clap=not args.no_clap, prompt_start=args.prompt_start)
    except (ValueError, TypeError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
    out = result.save(args.out)
    print(result.markdown())
    print(f"total run time: {result.run_seconds:.1f} s ({result.settings['size']} size); files in {out}")
    return result


if __name__ == "__main__":
    main()
