"""The registry of model families the engine can train: ``python -m course_lib.train --list`` prints it.

Built-in families are imported lazily (only the one you train is imported). A family defined elsewhere
(a notebook, your own package) joins by decorating its class with :func:`register_family`.
"""

from __future__ import annotations

import difflib
import importlib

from course_lib.train.errors import ConfigError
from course_lib.train.families.base import EvalResult, Family, OptimizerGroup, unwrap_model

# name -> module that defines and registers it. A new family adds one line here.
_BUILTIN: dict[str, str] = {
    "mel_autoencoder": "course_lib.train.families.mel_autoencoder",
    "melgan": "course_lib.train.families.melgan",
    "vocos": "course_lib.train.families.vocos",
    "mel_vqvae": "course_lib.train.families.mel_vqvae",
    "codec": "course_lib.train.families.codec",
    "audiogen": "course_lib.train.families.audiogen",
    "diffsound": "course_lib.train.families.diffsound",
    "diffsound_ar": "course_lib.train.families.diffsound",
    "n2m_generator": "course_lib.train.families.noise2music",
    "n2m_cascader": "course_lib.train.families.noise2music",
}

_REGISTRY: dict[str, Family] = {}


def register_family(family: type[Family] | Family) -> type[Family] | Family:
    """Register a :class:`Family` subclass (as a class decorator) or instance under its ``name``."""
    instance = family() if isinstance(family, type) else family
    if not instance.name:
        raise ValueError(f"{type(instance).__name__} must set a non-empty class attribute 'name'")
    _REGISTRY[instance.name] = instance
    return family


def list_families() -> list[str]:
    """Names of every family that can be trained: the built-ins and any registered since."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def get_family(name: str) -> Family:
    """The registered family called ``name``; an unknown name raises ``ConfigError`` listing the known ones."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _REGISTRY:
        known = list_families()
        match = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {match[0]}?)" if match else ""
        raise ConfigError(f"unknown family {name!r}{hint}; known families: {', '.join(known)}")
    return _REGISTRY[name]


__all__ = ["EvalResult", "Family", "OptimizerGroup", "get_family", "list_families", "register_family", "unwrap_model"]
