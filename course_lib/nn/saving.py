"""Saving and loading a model as ``config.json`` + ``model.safetensors`` (nothing pickled), written once.

Every model whose config is a dataclass with ``to_dict``/``from_dict`` (the AudioGen LM, the Diffsound token
decoder, the 1-D U-Net) saves and loads through these two functions, so a shipped folder always has the same
two files and a missing file gives the same clear error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "load_pretrained", "save_pretrained"]


def save_pretrained(model: nn.Module, config: Any, folder: str | os.PathLike) -> Path:
    """Write ``model``'s weights to ``folder/model.safetensors`` and ``config.to_dict()`` to ``folder/config.json``
    (the folder is created if needed); return the folder."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
    return folder


def load_pretrained(model_cls: type[nn.Module], config_cls: Any, folder: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> nn.Module:
    """Inverse of :func:`save_pretrained`: ``model_cls(config_cls.from_dict(config.json))`` with the saved weights,
    on ``map_location``, in eval mode. A folder without both files raises ``FileNotFoundError`` naming them."""
    from safetensors.torch import load_model

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{folder} does not hold a saved {model_cls.__name__} ({CONFIG_FILE} and {WEIGHTS_FILE})")
    model = model_cls(config_cls.from_dict(json.loads((folder / CONFIG_FILE).read_text())))
    load_model(model, str(folder / WEIGHTS_FILE), device=str(map_location))
    return model.to(map_location).eval()
