"""Fingerprints that pin a generator's output byte for byte (the shipped models were trained on it)."""

import hashlib
import json


def clip_fingerprint(clip) -> tuple[str, str]:
    """``(audio, metadata)``: the first 16 hex digits of the sha256 of the float32 audio bytes, and of the
    caption followed by the attributes as sorted JSON. Same generator, same arguments: same pair on any machine
    (NumPy's float32 synthesis is elementwise and the fingerprints were checked with its SIMD paths off)."""
    audio = hashlib.sha256(clip.audio.tobytes()).hexdigest()[:16]
    meta = hashlib.sha256((clip.caption + json.dumps(clip.attributes, sort_keys=True)).encode()).hexdigest()[:16]
    return audio, meta
