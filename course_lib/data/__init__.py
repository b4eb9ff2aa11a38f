"""The course's captioned datasets, made offline, and the bridge to real corpora.

* ``sound_events``: AudioCaps-like captioned sound events synthesised from parameters (version 1, the default
  and what the shipped models were trained on; version 2, ``sound_events_v2``: several recipes per class,
  a room, varied backgrounds);
* ``music``: MusicCaps-like captioned melodies and drums (version 1 synthesised, the default; version 2,
  ``music_sf2``, played on General MIDI instruments by the NumPy SoundFont player ``soundfont``);
* ``captions_v2``: the version 2 caption grammar (synonyms, templates, optional facts) and its held-out part,
  ``generate_clip(..., version=2, grammar="heldout")`` for test clips, to measure generalisation;
* ``probes``: functions that read attributes (class, count, pitch, loudness, tempo) back from audio;
* ``export`` / ``loaders``: write the generated clips as a Hugging Face *audiofolder*, and read it or any
  real captioned corpus back through ``datasets`` without torchcodec;
* ``torch_dataset``: ``torch.utils.data`` datasets and collation for training.

Every record is a :class:`Clip`. Heavy modules (``datasets``) are imported only when used.
"""

from importlib import import_module

from course_lib.data.clip import Clip

_LAZY = {
    "export_clips": "course_lib.data.export",
    "export_course_dataset": "course_lib.data.export",
    "load_captioned": "course_lib.data.loaders",
    "scan_captioned": "course_lib.data.loaders",
    "PathOutsideDatasetError": "course_lib.data.loaders",
    "CaptionedAudioDataset": "course_lib.data.torch_dataset",
    "GeneratedDataset": "course_lib.data.torch_dataset",
    "collate_captioned": "course_lib.data.torch_dataset",
}

__all__ = ["Clip", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'course_lib.data' has no attribute {name!r}")
