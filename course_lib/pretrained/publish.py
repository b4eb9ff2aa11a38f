"""Turn a finished training run into a shipped model: weights, config, card, measured metrics.

    python -m course_lib.pretrained.publish --run runs/mel_vqvae_course --name mel_vqvae_course \\
        --command "python -m course_lib.train mel_vqvae --config course"

Loads the run's ``--which`` checkpoint (last by default), writes ``model.safetensors`` + ``config.json``
with the model's own ``save_pretrained``, measures it on held-out clips with the function registered for
``--name`` and writes ``card.json`` and ``CARD.md`` next to it.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from course_lib.pretrained import _REGISTRY, PRETRAINED_DIR, _resolve
from course_lib.runtime import configure_threads


def to_half_precision(weights: Path) -> None:
    """Rewrite a safetensors file with its float32 tensors stored as float16 (half the bytes in git).

    ``from_pretrained`` copies them into the float32 model (``load_state_dict`` casts), so the model still
    computes in float32; only the weights are rounded to float16's 11-bit mantissa (relative error ≤ 2^-11).
    The card's metrics are measured after this rounding, on exactly the shipped weights."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    save_file({k: (v.half() if v.dtype == torch.float32 else v) for k, v in tensors.items()}, str(weights))


def card_evaluation(name: str, settings: dict, metrics: dict, relative: float = 0.02) -> dict:
    """A card's ``evaluation`` block: how it was measured, the metrics, and the tolerance the tests apply."""
    from course_lib.pretrained.measures import RATE_FLIPS, prompt_clips, rate_counts, tolerance_text

    counts = rate_counts(metrics, prompt_clips(name, settings))
    evaluation = {"split": "test (held out: never used in training or in the run's evaluation)",
                  "settings": settings, "metrics": metrics, "relative_tolerance": relative}
    if counts:
        evaluation.update(rate_counts=counts, rate_flips=RATE_FLIPS.get(name, 1))
    evaluation["tolerance"] = tolerance_text(relative, evaluation.get("rate_flips", 0))
    return evaluation


def publish(run_dir: Path, name: str, command: str, which: str = "last", description: str = "",
            settings: dict | None = None, half: bool = False) -> dict:
    from course_lib.train import load_from_run

    if name not in _REGISTRY:
        raise KeyError(f"register {name!r} in course_lib/pretrained/__init__.py first")
    model = load_from_run(run_dir, which=which)
    folder = PRETRAINED_DIR / name
    model.save_pretrained(folder)
    if half:
        to_half_precision(folder / "model.safetensors")
        model = _resolve(_REGISTRY[name][0]).from_pretrained(folder)  # measure exactly what is shipped
    settings = settings or {}
    metrics = _resolve(_REGISTRY[name][1])(model, **settings)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    config_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    card = {
        "name": name,
        "description": description,
        "model_class": _REGISTRY[name][0],
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_dtype": "float16 (computed in float32)" if half else "float32",
        "training": {
            "command": command,
            "checkpoint": which,
            "steps": summary.get("steps"),
            "train_seconds": round(summary.get("train_seconds", 0.0), 1),
            "machine": f"{platform.machine()} CPU, torch {torch.__version__}, 1 thread (2-core machine, shared)",
            "data": "course generators, train split (see config.yaml in the card's text)",
        },
        "evaluation": card_evaluation(name, settings, metrics),
    }
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    lines = [f"# {name}", "", description, "", f"- class: `{card['model_class']}`",
             f"- parameters: {card['parameters']:,} (weights stored as {card['weights_dtype']})",
             f"- trained with: `{command}`",
             f"- steps: {card['training']['steps']}, training time: {card['training']['train_seconds']} s on "
             f"{card['training']['machine']}", "- data: the course's generated clips, train split", "",
             "## Held-out metrics", "", "Re-measured by the tests (`tests/test_pretrained.py`) with "
             f"`course_lib.pretrained.measure({name!r})`:", "", "| metric | value |", "|---|---|"]
    counts = card["evaluation"].get("rate_counts", {})
    lines += [f"| {k} | {v}{f' (of {counts[k]} prompts)' if k in counts else ''} |" for k, v in metrics.items()]
    lines += ["", "**Tolerance.** " + card["evaluation"]["tolerance"]]
    lines += ["", "## Training config", "", "```yaml", config_text.strip(), "```", ""]
    (folder / "CARD.md").write_text("\n".join(lines))
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--command", required=True, help="the command that trained the run (for the card)")
    parser.add_argument("--which", default="last", choices=["last", "best", "ema"])
    parser.add_argument("--description", default="")
    parser.add_argument("--settings", default="{}", help="JSON keyword arguments for the measuring function")
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    args = parser.parse_args(argv)
    configure_threads()  # the cards' measures run on one thread unless $COURSE_NUM_THREADS says otherwise
    card = publish(args.run, args.name, args.command, args.which, args.description, json.loads(args.settings),
                   args.half)
    print(json.dumps(card["evaluation"]["metrics"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
