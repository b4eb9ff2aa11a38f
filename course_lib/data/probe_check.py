"""How well the course's probes read the labels of fresh, real (not generated-by-a-model) clips.

The probes are the judges of every generator's card, so they must first read the data itself: on clips the
course's generators make, with the labels they know exactly. :func:`probe_accuracy` measures, on ``n`` fresh
test-split clips of each domain (indices from ``start``, far outside the probes' training indices, which are
train-split clips from 0):

* sound events: ``count`` (:func:`~course_lib.data.probes.count_events`), ``pitch_band``
  (:func:`~course_lib.data.probes.estimate_pitch`) and ``class`` (an
  :class:`~course_lib.data.probes.EventClassifier` trained on the same data version);
* music: ``tempo`` and ``mode`` (:func:`~course_lib.data.music_probes.music_adherence`) and ``instrument``
  (:func:`~course_lib.data.music_probes.train_instrument_classifier` on the same data version).

Command line (about 5 minutes on one core)::

    python -m course_lib.data probes --version 2 --n 500

On 500 clips per domain of version 2 it measured class 0.970, count 0.990 (293 clips with a count), pitch band
0.986 (209 pitched clips), tempo 0.984, mode 0.982, instrument 0.980.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from course_lib.data import music, music_probes, probes, sound_events

#: Probe training settings at full size (the small versions in the tests train on fewer clips).
EVENT_PROBE = {"n_per_class": 40, "epochs": 300}
INSTRUMENT_PROBE = {"n_per_class": 200, "epochs": 400}


def probe_accuracy(version: int = 2, n: int = 500, start: int = 50_000, clip_seconds: float = 4.0,
                   sample_rate: int = 16_000, event_probe: dict[str, int] | None = None,
                   instrument_probe: dict[str, int] | None = None) -> dict[str, Any]:
    """Share of ``n`` fresh test clips per domain on which each probe reads the label, with the number of clips
    that carry each label (``n_<attribute>``): ``{"count": 0.99, "n_count": 290, ...}``. ``event_probe`` and
    ``instrument_probe`` override the classifiers' training settings (:data:`EVENT_PROBE`,
    :data:`INSTRUMENT_PROBE`; the tests use small ones)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (clips per domain), got {n!r}")
    out: dict[str, Any] = {"version": version, "clips_per_domain": n, "start": start}
    classifier = probes.train_event_classifier(**(event_probe or EVENT_PROBE), clip_seconds=clip_seconds, sample_rate=sample_rate,
                                               version=version)
    checks = [probes.adherence(c.audio, c.sample_rate, c.attributes, classifier)
              for c in sound_events.generate_clips("test", n, clip_seconds, sample_rate, start=start, version=version)]
    _rates(out, checks, ("class", "count", "pitch_band"))
    instruments = music_probes.train_instrument_classifier(**(instrument_probe or INSTRUMENT_PROBE), clip_seconds=clip_seconds,
                                                           sample_rate=sample_rate, version=version)
    checks = [music_probes.music_adherence(c.audio, c.sample_rate, c.attributes, instruments)
              for c in music.generate_clips("test", n, clip_seconds, sample_rate, start=start, version=version)]
    _rates(out, checks, ("tempo", "mode", "instrument"))
    return out


def _rates(out: dict[str, Any], checks: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
    for key in keys:
        hits = [bool(c[key]) for c in checks if key in c]
        out[key] = round(float(np.mean(hits)), 4) if hits else None
        out[f"n_{key}"] = len(hits)
