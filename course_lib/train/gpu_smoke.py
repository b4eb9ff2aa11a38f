"""``make gpu-smoke``: every model family's paper config for a few steps on one CUDA GPU, with an exact resume.

Usage::

    python -m course_lib.train.gpu_smoke [--steps 20] [--families audiogen,codec] [--compile] [key=value ...]
    make gpu-smoke [GPU_SMOKE_ARGS="--steps 40 --families codec"] [GPU_SMOKE_COMPILE=1]

For every family in the registry (:func:`~course_lib.train.families.list_families`, read when it runs, so a
newly registered family is included without touching this file), or those named by ``--families``:

1. **Config.** The family's ``paper`` config with ``train.device=cuda``, bf16 autocast
   (``train.precision=bf16``), ``train.deterministic=true`` (cuBLAS/cuDNN's deterministic kernels, so that the
   resume can be compared bit for bit), ``train.compile`` when ``--compile`` or ``GPU_SMOKE_COMPILE=1``, a
   log line per step, a checkpoint at step N/2, no evaluation; then the ``key=value`` arguments (applied to
   every selected family). The optimizer is torch's fused AdamW where this torch has it for the device
   (``Trainer(..., fused_adamw=True)``).
2. **Stand-ins** for what a paper config names but a fresh machine lacks (and the smoke must not download):
   a frozen tokenizer that is a run folder not present here (``tokenizer.codec=runs/codec_paper``,
   ``tokenizer.vqvae=runs/mel_vqvae_paper``) becomes a *randomly initialised* model of that family's paper
   architecture; a hub text encoder (``t5:t5-large``, ``clip:openai/...``) becomes a random one-layer encoder
   of the same kind and the width ``model.text_dim`` asks for. The model being trained is exactly the paper's;
   the frozen parts are cheaper than the real ones (a real T5-XXL adds its own memory). A data source that is
   not the course's ``generated:*`` becomes ``generated:mixed``. Each replacement is listed in the table.
3. **Data.** Two batches of the config's generated clips are rendered once per process and cycled (the
   course's synthesiser runs on the CPU, slower than a GPU step; ``--stream-data`` reads through the config's
   ``DataLoader`` workers instead, so the data pipeline is timed too).
4. **Run A**: N steps from scratch in a fresh process (checkpoint at N/2 and N). It gives steps/s (the steps
   after the first quarter, at most 5 warm-up steps skipped: cuDNN autotuning, ``torch.compile``), the peak
   GPU memory (``torch.cuda.max_memory_allocated``) and the parameter count (every parameter of the trained
   module, a GAN's discriminators included). On a CUDA out-of-memory error the batch is halved and run A
   repeated (the table says so); an op without a deterministic kernel turns ``train.deterministic`` off for
   that family (said too).
5. **Run B**: A's step-N/2 checkpoint copied to a new run folder, continued to N in another fresh process.
6. **Resume check**: B's final weights (and EMA weights) against A's, and B's logged losses of steps
   N/2+1..N against A's. ``exact``: bitwise equal; ``ok``: within ``--tol`` (relative, default 1e-2: a few
   bf16 roundings; where deterministic kernels were off, nondeterministic atomics make some difference);
   ``DIFFERS``: beyond it.

Every run is its own process (``python -m course_lib.train.gpu_smoke --worker SPEC``) calling the engine
in-process: a CUDA out-of-memory error or a crashed kernel leaves the CUDA context of that process unusable,
and only a new process measures the next family's peak memory from zero; run B must be a fresh process for the
resume to prove anything. The table is printed and written, with ``results.json``, to a new folder under
``--out`` (``build/gpu_smoke``); run folders are deleted after each family (paper checkpoints are GBs) unless
``--keep-runs``. Exit status: 0 every family trained and resumed within tolerance; 1 one did not; 2 usage
error, or no CUDA GPU. ``--device cpu`` (for the tests) runs the same path on the CPU with the ``tiny``
configs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMPILE_ENV = "GPU_SMOKE_COMPILE"
DEFAULT_STEPS = 20
DEFAULT_TOL = 1e-2
DEFAULT_OUT = "build/gpu_smoke"
_TRUE = ("1", "true", "yes", "on")
# a tokenizer field of a config section ``tokenizer`` -> the family whose model it is (stand-ins are built from it)
TOKENIZER_PRODUCERS = {"codec": "codec", "vqvae": "mel_vqvae"}
_STAND_IN_CAPTIONS = [
    "a dog barks twice", "a bell rings in a large hall", "rain falls on a metal roof", "a car horn honks",
    "a slow piano melody in a minor key", "fast drums and a bass line", "birds sing while wind blows",
    "a door slams shut", "a violin plays a high note", "footsteps on gravel", "an engine idles then stops",
    "a cheerful guitar tune at a quick tempo",
]
_REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------------
# What to run
# --------------------------------------------------------------------------------------------------------


def selected_families(names: str | None = None) -> list[str]:
    """The families to smoke-test: every registered one (read from the registry now), or the comma-separated
    ``names``; an unknown name raises ``ConfigError`` listing the known ones."""
    from course_lib.train.errors import ConfigError
    from course_lib.train.families import list_families

    known = list_families()
    if not names:
        return known
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ConfigError(f"unknown famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; known families: "
                          f"{', '.join(known)}")
    return wanted


def base_overrides(*, device: str, steps: int, precision: str = "bf16", compile: bool = False,
                   deterministic: bool = True, pooled: bool = True) -> list[str]:
    """The overrides every family gets: device, precision, compile, N steps, a checkpoint at N/2 (all kept),
    a log line per step, no evaluation, no progress bar or TensorBoard (and one CPU thread on the CPU)."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (a checkpoint at steps // 2, then a resume), got {steps}")
    out = [f"train.device={device}", f"train.precision={precision}", f"train.compile={str(compile).lower()}",
           f"train.deterministic={str(deterministic).lower()}", f"train.max_steps={steps}",
           f"train.ckpt_every={steps // 2}", f"train.keep_last={steps}", "train.log_every=1",
           "train.progress=false", "train.tensorboard=false", "eval.every=0", "eval.at_end=false"]
    if device == "cpu":
        out.append("train.num_threads=1")
    if pooled:
        out.append("data.num_workers=0")  # the clips are in memory: workers would only copy them
    return out


@dataclass
class StandIn:
    """One thing a config names that is not here, and what replaces it: ``key`` (``tokenizer.codec``), the
    ``spec`` it had, ``kind`` (``tokenizer``, ``text_encoder`` or ``data``) and ``detail`` (producer family, or
    text-encoder kind and width, or the new data source)."""

    key: str
    spec: str
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)

    def note(self) -> str:
        if self.kind == "tokenizer":
            return f"{self.key}: random {self.detail['family']} ({self.detail['size']} arch.) for {self.spec}"
        if self.kind == "text_encoder":
            return f"text: random 1-layer {self.detail['text_kind']} {self.detail['width']}-d for {self.spec}"
        return f"data: {self.detail['source']} for {self.spec}"


def _local(spec: str) -> bool:
    return Path(spec).expanduser().exists()


def _find_field(obj: Any, name: str) -> Any:
    """The first field called ``name`` in a nest of dataclasses (depth first), or None."""
    if not dataclasses.is_dataclass(obj):
        return None
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == name:
            return value
        found = _find_field(value, name)
        if found is not None:
            return found
    return None


def _producer_size(producer: str, spec: str, size: str) -> str:
    """The packaged config of ``producer`` whose ``train.run_dir`` is ``spec`` (``runs/codec_paper`` -> ``paper``),
    else ``size``."""
    from course_lib.train.families import get_family
    from course_lib.train.families.base import CONFIG_DIR

    family = get_family(producer)
    sizes = [size, *sorted(p.stem[len(producer) + 1:] for p in CONFIG_DIR.glob(f"{producer}_*.yaml"))]
    for candidate in sizes:
        try:
            run_dir = family.load_config(candidate, validate=False).train.run_dir
        except Exception:  # a size this family does not package, or one that does not load
            continue
        if Path(run_dir) == Path(spec):
            return candidate
    return size


def plan_stand_ins(cfg: Any, size: str = "paper") -> list[StandIn]:
    """What in ``cfg`` (a run config, not yet validated) names something this machine lacks: tokenizer run
    folders that do not exist (``pretrained:`` names ship with the course), hub text encoders (a ``kind:NAME``
    that is not a local folder; ``course`` ships), and data sources other than the course's ``generated:*``."""
    plan: list[StandIn] = []
    tok = getattr(cfg, "tokenizer", None)
    for name, producer in TOKENIZER_PRODUCERS.items():
        spec = getattr(tok, name, None) if tok is not None else None
        if isinstance(spec, str) and spec and not spec.startswith("pretrained:") and not _local(spec):
            plan.append(StandIn(f"tokenizer.{name}", spec, "tokenizer",
                                {"family": producer, "size": _producer_size(producer, spec, size)}))
    cond = getattr(cfg, "conditioning", None)
    spec = getattr(cond, "text_encoder", None) if cond is not None else None
    if isinstance(spec, str) and ":" in spec:
        kind, _, where = spec.partition(":")
        if kind in ("t5", "clip", "bert") and not _local(where):
            width = _find_field(cfg.model, "text_dim")
            plan.append(StandIn("conditioning.text_encoder", spec, "text_encoder",
                                {"text_kind": kind, "width": int(width) if width else 512}))
    data = cfg.data
    if not data.source.startswith("generated:"):
        plan.append(StandIn("data.source", data.source, "data", {"source": "generated:mixed"}))
    if data.eval_source is not None and not data.eval_source.startswith("generated:"):
        plan.append(StandIn("data.eval_source", data.eval_source, "data", {"source": "none"}))
    return plan


def make_stand_ins(plan: list[StandIn], folder: Path) -> list[str]:
    """Build what ``plan`` lists under ``folder`` (once: a folder already there is reused) and return the
    overrides that point the config at it. Random weights, seeded, so every run sees the same stand-ins."""
    import torch

    from course_lib.train.families import get_family

    overrides = []
    for item in plan:
        if item.kind == "data":
            overrides.append(f"{item.key}={item.detail['source']}")
            continue
        if item.kind == "tokenizer":
            target = folder / f"{item.detail['family']}_{item.detail['size']}_random"
            if not (target / "config.json").is_file():
                family = get_family(item.detail["family"])
                cfg = family.load_config(item.detail["size"], validate=False)
                torch.manual_seed(0)
                model = family.build_model(cfg.model)
                if item.detail["family"] == "codec":
                    from course_lib.train.families.codec import codec_of

                    model = codec_of(model)
                model.eval().save_pretrained(target)
            overrides.append(f"{item.key}={target}")
        else:
            from course_lib.text.hf import save_random_tiny

            kind, width = item.detail["text_kind"], item.detail["width"]
            target = folder / f"text_{kind}_{width}_random"
            if not (target / "config.json").is_file():
                save_random_tiny(kind, target, _STAND_IN_CAPTIONS, width=width)
            overrides.append(f"{item.key}={kind}:{target}")
    return overrides


# --------------------------------------------------------------------------------------------------------
# One run, in its own process
# --------------------------------------------------------------------------------------------------------


class PooledDataset:
    """``len(base)`` items that cycle over the first ``pool`` items of ``base``, rendered once at construction.

    Keeps the data order, sampler and epoch arithmetic of ``base`` (same length) while reading from memory;
    declares ``base``'s ``sample_rate`` and ``collate_fn`` so the engine checks and batches it the same way."""

    def __init__(self, base: Any, pool: int) -> None:
        self.size = len(base)
        self.items = [base[i] for i in range(max(1, min(pool, self.size)))]
        if getattr(base, "sample_rate", None) is not None:
            self.sample_rate = base.sample_rate
        if getattr(base, "collate_fn", None) is not None:
            self.collate_fn = base.collate_fn

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Any:
        return self.items[index % len(self.items)]


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return f"{type(err).__name__}: {text}"[:400]


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one run as ``spec`` says (``family``, ``size``, ``overrides``, ``resume``, ``fused``, ``pool``) and
    return what the table needs: ``status`` (``ok``, ``oom``, ``nondeterministic`` or ``error``), ``message``,
    ``params``, ``peak_bytes`` (CUDA only), ``fused``, ``device_name`` and the engine's summary."""
    import torch

    from course_lib.runtime import configure_threads
    from course_lib.train.data import TRAIN_SPLIT, build_dataset
    from course_lib.train.engine import Trainer, fused_adamw_supported
    from course_lib.train.families import get_family

    configure_threads()  # as `python -m course_lib.train` does; train.num_threads > 0 wins
    result: dict[str, Any] = {"status": "error", "message": ""}
    try:
        family = get_family(spec["family"])
        cfg = family.load_config(spec["size"], spec["overrides"])
        device = torch.device(cfg.train.device)
        cuda = device.type == "cuda"
        fused = bool(spec.get("fused", True)) and fused_adamw_supported(device)
        train_ds = None
        if spec.get("pool", 0) > 0:
            train_ds = PooledDataset(build_dataset(cfg.data, TRAIN_SPLIT, cfg.train.seed), int(spec["pool"]))
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        trainer = Trainer(family, cfg, resume=spec["resume"], train_dataset=train_ds, fused_adamw=fused)
        summary = trainer.fit()
        result = {
            "status": "ok", "message": "", "fused": fused, "summary": summary,
            "params": sum(p.numel() for p in trainer.model.parameters()),
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "peak_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
            "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
            "batch_size": cfg.data.batch_size,
        }
    except Exception as err:  # every failure becomes a row of the table, not a crash of the smoke test
        traceback.print_exc()
        oom = type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()
        nondet = "deterministic implementation" in str(err) or "use_deterministic_algorithms" in str(err)
        result = {"status": "oom" if oom else "nondeterministic" if nondet else "error", "message": _one_line(err)}
    return result


def _worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result = run_worker(spec)
    out = Path(spec["result"])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, out)
    return 0 if result["status"] == "ok" else 3 if result["status"] == "oom" else 1


def _launch(spec: dict[str, Any], folder: Path, name: str, timeout: float) -> dict[str, Any]:
    """Run one worker process; its output goes to ``folder/name.log``; returns its result (or why none came)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "result": str(folder / f"{name}.result.json")}
    spec_path = folder / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    log = folder / f"{name}.log"
    env = dict(os.environ, PYTHONPATH=str(_REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # one process, one GPU: never join a torchrun job this command runs under
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, set before any CUDA work
    with open(log, "w", encoding="utf-8") as fh:
        try:
            proc = subprocess.run([sys.executable, "-m", "course_lib.train.gpu_smoke", "--worker", str(spec_path)],
                                  env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            return {"status": "error", "message": f"timed out after {timeout:.0f} s (see {log})"}
    result_path = Path(spec["result"])
    if result_path.is_file():
        return json.loads(result_path.read_text())
    tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:] or [""]
    return {"status": "error", "message": f"the process ended with status {code} and no result: {tail[0][:300]} "
                                          f"(see {log})"}


# --------------------------------------------------------------------------------------------------------
# Comparing the resumed run with the uninterrupted one
# --------------------------------------------------------------------------------------------------------


def train_losses(run_dir: Path) -> dict[int, float]:
    """``{step: loss}`` of the ``train`` lines of ``run_dir/metrics.jsonl``."""
    out = {}
    path = Path(run_dir) / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("kind") == "train":
                out[int(rec["step"])] = float(rec["loss"])
    return out


def steps_per_second(run_dir: Path, steps: int) -> float | None:
    """Steps per second of the steps after the warm-up (the first quarter, at most 5), from the per-step
    ``steps_per_second`` of ``metrics.jsonl`` (the engine's time of each step: data, forward, backward, update)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    rates = {int(r["step"]): float(r["steps_per_second"]) for r in recs if r.get("kind") == "train"}
    skip = min(steps // 4, 5)
    kept = [rates[s] for s in sorted(rates) if s > skip and rates[s] > 0]
    if not kept:
        return None
    return len(kept) / sum(1.0 / r for r in kept)


def compare_runs(reference: Path, resumed: Path, from_step: int, tol: float = DEFAULT_TOL) -> dict[str, Any]:
    """Compare the final checkpoint of ``resumed`` with ``reference``'s (model and EMA weights, every tensor)
    and their logged losses after ``from_step``. Returns ``verdict`` (``exact``, ``ok`` or ``DIFFERS``),
    ``weights_rel`` (‖a − b‖ / ‖a‖ over all floating tensors), ``loss_rel`` (largest relative loss difference)
    and ``detail``."""
    import torch
    from safetensors.torch import load_file

    from course_lib.train import checkpoint as ckpt

    a_dir, b_dir = ckpt.latest_checkpoint(reference), ckpt.latest_checkpoint(resumed)
    if a_dir is None or b_dir is None or a_dir.name != b_dir.name:
        return {"verdict": "DIFFERS", "weights_rel": None, "loss_rel": None,
                "detail": f"final checkpoints differ: {a_dir and a_dir.name} vs {b_dir and b_dir.name}"}
    bitwise, diff2, norm2, problems = True, 0.0, 0.0, []
    for name in (ckpt.MODEL_FILE, ckpt.EMA_FILE):
        if not (a_dir / name).is_file() and not (b_dir / name).is_file():
            continue
        if not ((a_dir / name).is_file() and (b_dir / name).is_file()):
            problems.append(f"{name} in only one run")
            continue
        a, b = load_file(a_dir / name), load_file(b_dir / name)
        if a.keys() != b.keys():
            problems.append(f"{name}: other tensors ({sorted(set(a) ^ set(b))[:3]})")
            continue
        for key in a:
            x, y = a[key], b[key]
            if x.shape != y.shape or x.dtype != y.dtype:
                problems.append(f"{key}: shape/dtype {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}")
                continue
            if torch.equal(x, y):
                if x.is_floating_point():
                    norm2 += float(x.double().pow(2).sum())
                continue
            bitwise = False
            if not x.is_floating_point():
                problems.append(f"{key} (integer) differs")
                continue
            diff2 += float((x.double() - y.double()).pow(2).sum())
            norm2 += float(x.double().pow(2).sum())
    weights_rel = math.sqrt(diff2) / max(math.sqrt(norm2), 1e-30)
    la, lb = train_losses(reference), train_losses(resumed)
    steps = [s for s in sorted(la) if s > from_step]
    missing = [s for s in steps if s not in lb]
    if missing or not steps:
        problems.append(f"losses of steps {missing or 'after ' + str(from_step)} missing")
    loss_rel = max((abs(la[s] - lb[s]) / max(abs(la[s]), 1e-8) for s in steps if s in lb), default=0.0)
    if any(la[s] != lb[s] for s in steps if s in lb):
        bitwise = False
    finite = math.isfinite(weights_rel) and math.isfinite(loss_rel)
    if problems or not finite:
        verdict = "DIFFERS"
    elif bitwise:
        verdict = "exact"
    else:
        verdict = "ok" if weights_rel <= tol and loss_rel <= tol else "DIFFERS"
    return {"verdict": verdict, "weights_rel": weights_rel, "loss_rel": loss_rel, "detail": "; ".join(problems)}


# --------------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One family's line of the table."""

    family: str
    ok: bool = False
    params: int | None = None
    batch: str = ""
    steps_per_s: float | None = None
    peak_bytes: int | None = None
    resume: str = ""
    notes: list[str] = field(default_factory=list)
    device: str = ""


def _params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def _memory(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def resume_text(cmp: dict[str, Any]) -> str:
    """``exact``, ``ok (w 3e-04, loss 1e-03)`` or ``DIFFERS (...)`` for the table's resume column."""
    verdict = cmp["verdict"]
    if verdict == "exact":
        return "exact"
    parts = []
    if cmp.get("weights_rel") is not None:
        parts.append(f"w {cmp['weights_rel']:.1e}")
    if cmp.get("loss_rel") is not None:
        parts.append(f"loss {cmp['loss_rel']:.1e}")
    if cmp.get("detail"):
        parts.append(cmp["detail"])
    return f"{verdict} ({', '.join(parts)})" if parts else verdict


def format_table(rows: Sequence[Row], header: Sequence[str] = ()) -> str:
    """The result as a plain-text table (one line per family; failures name their error in ``notes``), under
    the ``header`` lines."""
    cols = ["family", "params", "batch", "steps/s", "peak GPU mem", "resume", "notes"]
    body = []
    for r in rows:
        rate = "-" if r.steps_per_s is None else (f"{r.steps_per_s:.2f}" if r.steps_per_s < 100 else
                                                  f"{r.steps_per_s:.0f}")
        body.append([r.family, _params(r.params), r.batch or "-", rate, _memory(r.peak_bytes),
                     r.resume or ("-" if r.ok else "FAILED"), "; ".join(r.notes)])
    widths = [max(len(c), *(len(line[i]) for line in body)) if body else len(c) for i, c in enumerate(cols)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    lines = [*header, fmt(cols), fmt(["-" * w for w in widths]), *(fmt(line) for line in body)]
    passed = sum(r.ok for r in rows)
    lines.append(f"{passed}/{len(rows)} families trained and resumed within tolerance")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# One family, start to end
# --------------------------------------------------------------------------------------------------------


@dataclass
class Options:
    """The command line, parsed."""

    device: str = "cuda"
    size: str = "paper"
    steps: int = DEFAULT_STEPS
    precision: str = "bf16"
    compile: bool = False
    deterministic: bool = True
    fused: bool = True
    stream_data: bool = False
    tol: float = DEFAULT_TOL
    timeout: float = 1800.0
    keep_runs: bool = False
    overrides: list[str] = field(default_factory=list)


def _log(message: str) -> None:
    print(f"[gpu-smoke] {message}", file=sys.stderr, flush=True)


def smoke_family(name: str, opts: Options, work: Path, stand_in_dir: Path) -> Row:
    """Run A, run B and the comparison for family ``name`` under ``work/name``; returns its row."""
    from course_lib.train import checkpoint as ckpt
    from course_lib.train.families import get_family

    row = Row(name)
    folder = work / name
    try:
        family = get_family(name)
        deterministic = opts.deterministic
        common = base_overrides(device=opts.device, steps=opts.steps, precision=opts.precision,
                                compile=opts.compile, deterministic=deterministic, pooled=not opts.stream_data)
        cfg = family.load_config(opts.size, [*common, *opts.overrides], validate=False)
        plan = plan_stand_ins(cfg, opts.size)
        extra = make_stand_ins(plan, stand_in_dir)
        row.notes += [p.note() for p in plan]
        batch0 = batch = cfg.data.batch_size
    except Exception as err:  # a config that cannot even be read, or a stand-in that cannot be built
        row.notes.append(_one_line(err))
        return row
    pool = 0 if opts.stream_data else 2 * batch0

    def spec(run: str, resume: str) -> dict[str, Any]:
        over = [f"train.run_dir={folder / run}", *common, *opts.overrides, *extra]
        if batch != batch0:
            over.append(f"data.batch_size={batch}")
        if not deterministic:
            over.append("train.deterministic=false")
        return {"family": name, "size": opts.size, "overrides": over, "resume": resume, "fused": opts.fused,
                "pool": min(pool, 2 * batch) if pool else 0}

    while True:
        _log(f"{name}: run A, {opts.steps} steps at batch {batch}")
        shutil.rmtree(folder / "A", ignore_errors=True)
        a = _launch(spec("A", "never"), folder, "A", opts.timeout)
        if a["status"] == "oom" and batch > 1:
            batch //= 2
            continue
        if a["status"] == "nondeterministic" and deterministic:
            deterministic = False
            row.notes.append(f"train.deterministic off ({a['message'][:120]})")
            continue
        break
    row.batch = str(batch) if batch == batch0 else f"{batch} (from {batch0})"
    if batch != batch0:
        row.notes.append(f"batch {batch0} -> {batch}: CUDA out of memory at {2 * batch}")
    if a["status"] != "ok":
        row.notes.append(f"run A {a['status']}: {a['message']}")
        return row
    row.params, row.peak_bytes, row.device = a.get("params"), a.get("peak_bytes"), a.get("device_name", "")
    row.steps_per_s = steps_per_second(folder / "A", opts.steps)
    if not a.get("fused"):
        row.notes.append("AdamW not fused (no fused kernel for this device)")

    half = opts.steps // 2
    mid = folder / "A" / ckpt.CHECKPOINTS / ckpt.step_dir_name(half)
    if not mid.is_dir():
        row.notes.append(f"run A left no checkpoint at step {half}")
        return row
    shutil.rmtree(folder / "B", ignore_errors=True)
    shutil.copytree(mid, folder / "B" / ckpt.CHECKPOINTS / mid.name)
    _log(f"{name}: run B, resumed from step {half} in a new process")
    b = _launch(spec("B", "always"), folder, "B", opts.timeout)
    if b["status"] != "ok":
        row.notes.append(f"run B (resume) {b['status']}: {b['message']}")
        return row
    if (b.get("summary") or {}).get("resumed_from_step") != half:
        row.notes.append(f"run B did not resume from step {half}")
        return row
    cmp = compare_runs(folder / "A", folder / "B", half, opts.tol)
    row.resume = resume_text(cmp)
    row.ok = cmp["verdict"] in ("exact", "ok")
    if not opts.keep_runs:
        shutil.rmtree(folder / "A", ignore_errors=True)
        shutil.rmtree(folder / "B", ignore_errors=True)
    return row


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m course_lib.train.gpu_smoke",
        description="Every model family's paper config for a few steps on one CUDA GPU: steps/s, peak GPU memory, "
                    "parameters, and whether a resume from a mid-run checkpoint in a new process is exact.")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides applied to every selected family, after the smoke test's own")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"steps per run (default {DEFAULT_STEPS}; "
                                                                     "checkpoint and resume at steps // 2)")
    p.add_argument("--families", default=None, help="comma-separated families (default: every registered one)")
    p.add_argument("--compile", action="store_true", default=os.environ.get(COMPILE_ENV, "").strip().lower() in _TRUE,
                   help=f"train with torch.compile (default: off, or on when ${COMPILE_ENV}=1)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32", "auto"],
                   help="train.precision for every family (default bf16 autocast)")
    p.add_argument("--no-deterministic", dest="deterministic", action="store_false",
                   help="leave cuBLAS/cuDNN free to pick nondeterministic kernels (faster; the resume is then "
                        "compared within --tol only)")
    p.add_argument("--no-fused", dest="fused", action="store_false", help="plain (not fused) AdamW")
    p.add_argument("--stream-data", action="store_true",
                   help="read the data through the config's DataLoader workers (times the CPU synthesiser too)")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL, help="relative tolerance of the resume check (default "
                                                                  f"{DEFAULT_TOL})")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run before it is stopped (default 1800)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT}): a new sub-folder "
                                                      "per invocation")
    p.add_argument("--keep-runs", action="store_true", help="keep the run folders (checkpoints) of every family")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cuda (what make gpu-smoke is for); cpu runs the tiny configs, to test this tool")
    p.add_argument("--size", default=None, help="config size (default: paper on cuda, tiny on cpu)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def no_gpu_message() -> str:
    """The one line printed when no CUDA GPU is visible."""
    import torch

    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (f"error: make gpu-smoke needs a CUDA GPU (torch.cuda.is_available() is False); this torch "
            f"{torch.__version__} is {build}. Run it on a machine with an NVIDIA GPU (check nvidia-smi and "
            f"CUDA_VISIBLE_DEVICES); 'python -m course_lib.train.gpu_smoke --device cpu --steps 2' runs the tiny "
            f"configs on the CPU, to test the tool only")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 all passed, 1 a family failed, 2 usage error or no GPU)."""
    args = _parser().parse_args(argv)
    if args.worker:
        return _worker_main(args.worker)
    import torch

    from course_lib.train.errors import ConfigError

    if args.device == "cuda" and not torch.cuda.is_available():
        print(no_gpu_message(), file=sys.stderr)
        return 2
    if args.steps < 2:
        print(f"error: --steps must be >= 2 (a checkpoint at steps // 2, then a resume), got {args.steps}",
              file=sys.stderr)
        return 2
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        print(f"error: overrides must be key=value, got {bad[0]!r}", file=sys.stderr)
        return 2
    try:
        families = selected_families(args.families)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    opts = Options(device=args.device, size=args.size or ("paper" if args.device == "cuda" else "tiny"),
                   steps=args.steps, precision=args.precision, compile=args.compile,
                   deterministic=args.deterministic, fused=args.fused, stream_data=args.stream_data, tol=args.tol,
                   timeout=args.timeout, keep_runs=args.keep_runs, overrides=list(args.overrides))
    work = Path(args.out).expanduser().resolve() / time.strftime("%Y%m%d-%H%M%S")
    if work.exists():
        work = work.with_name(f"{work.name}-{os.getpid()}")
    work.mkdir(parents=True)
    stand_ins = work / "stand_ins"
    rows = []
    try:
        for name in families:
            t0 = time.perf_counter()
            row = smoke_family(name, opts, work, stand_ins)
            rows.append(row)
            _log(f"{name}: {'ok' if row.ok else 'FAILED'} in {time.perf_counter() - t0:.0f} s"
                 + ("" if row.ok else f" ({'; '.join(row.notes)})"))
    except KeyboardInterrupt:
        print(f"interrupted; the runs so far are in {work}", file=sys.stderr)
        return 130
    if not opts.keep_runs:
        shutil.rmtree(stand_ins, ignore_errors=True)
    # the device's name comes from the runs: this process never opens a CUDA context (it would hold GPU memory)
    where = "CPU (tool test, not a GPU measurement)" if args.device == "cpu" else \
        next((r.device for r in rows if r.device), "a CUDA GPU")
    header = [
        f"gpu-smoke on {where}, torch {torch.__version__}: {opts.size} configs, {opts.steps} steps (checkpoint at "
        f"{opts.steps // 2}, resumed in a new process), precision {opts.precision}, fused AdamW "
        f"{'where available' if opts.fused else 'off'}, torch.compile {'on' if opts.compile else 'off'}, "
        f"deterministic kernels {'on' if opts.deterministic else 'off'}",
        "data: each config's generated:* source, " + ("read through its DataLoader" if opts.stream_data else
                                                      "2 batches rendered once and cycled")
        + f"; steps/s after {min(opts.steps // 4, 5)} warm-up steps; params: every parameter of the trained module",
    ]
    if opts.overrides:
        header.append(f"overrides: {' '.join(opts.overrides)}")
    table = format_table(rows, header)
    print(table)
    (work / "table.txt").write_text(table + "\n")
    (work / "results.json").write_text(json.dumps({"header": header, "options": dataclasses.asdict(opts),
                                                   "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))
    _log(f"table and results.json in {work}")
    return 0 if rows and all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
