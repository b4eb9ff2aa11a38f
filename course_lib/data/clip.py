"""The one record every course dataset yields: a mono clip, its caption and the attributes it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Clip:
    """One captioned clip.

    Attributes:
        audio: mono float32 samples in [-1, 1], shape ``(time,)``.
        sample_rate: in Hz (the course default is 16 000).
        caption: a natural-language description ("a bell rings twice while rain falls").
        attributes: JSON-serialisable facts the clip was made from (class, pitch_hz, count, ...); empty for
            real corpora, where only the caption is known.
        id: a stable identifier (for generated clips it encodes the split and seed).
    """

    audio: np.ndarray
    sample_rate: int
    caption: str
    attributes: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.audio) / self.sample_rate
