"""Environment check: ``python -m course_lib.check`` (or ``make check``, which ``make lab`` runs first).

Prints one ``[OK]`` / ``[FAIL]`` line per requirement with the installed and the required version, then a
few functional checks (audio I/O, torchaudio transforms, the Jupyter kernel). Exits 1 if anything failed,
with what to do about it. A student's first problem is almost always the environment.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

PACKAGE = "course-lib"
KERNEL = "audio-course"


def _requirements() -> list[tuple[str, str]]:
    """(name, specifier) for each dependency of the installed course package (from pyproject.toml)."""
    try:
        reqs = metadata.requires(PACKAGE) or []
    except metadata.PackageNotFoundError:
        return []
    out = []
    for req in reqs:
        if "extra ==" in req:
            continue
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", req.split(";")[0].strip())
        if m:
            out.append((m.group(1), m.group(2).strip()))
    return out


def _version_ok(installed: str, spec: str) -> bool:
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        return Version(installed) in SpecifierSet(spec) if spec else True
    except Exception:  # packaging missing or an odd local version: do not fail the check for that
        return True


def run_checks() -> list[tuple[bool, str]]:
    """Return ``(ok, message)`` per check."""
    results: list[tuple[bool, str]] = []
    py = sys.version_info
    results.append((py >= (3, 10), f"python {py.major}.{py.minor}.{py.micro} (required >= 3.10)"))
    reqs = _requirements()
    if not reqs:
        results.append((False, f"{PACKAGE} is not installed in this Python ({sys.executable}); run `make lab`"))
    for name, spec in reqs:
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            results.append((False, f"{name}: not installed (required {spec or 'any'})"))
            continue
        ok = _version_ok(installed, spec)
        results.append((ok, f"{name} {installed} (required {spec or 'any'})"))
    results.extend(_functional_checks())
    return results


def _functional_checks() -> list[tuple[bool, str]]:
    out: list[tuple[bool, str]] = []
    try:
        import io

        import numpy as np
        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, np.zeros(160, dtype="float32"), 16000, format="WAV")
        out.append((True, "soundfile writes and reads WAV"))
    except Exception as err:  # pragma: no cover - depends on the machine
        out.append((False, f"soundfile cannot write WAV: {err} (libsndfile missing? reinstall soundfile)"))
    try:
        import torch
        import torchaudio.transforms as T

        T.MelSpectrogram(16000, n_fft=512, n_mels=40)(torch.zeros(1, 1600))
        out.append((True, "torchaudio transforms run"))
    except Exception as err:  # pragma: no cover
        out.append((False, f"torchaudio transforms fail: {err} (torch and torchaudio versions must match)"))
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        specs = KernelSpecManager().find_kernel_specs()
        out.append((KERNEL in specs, f"Jupyter kernel '{KERNEL}' registered"
                    + ("" if KERNEL in specs else " -- run `make install` to register it")))
    except Exception as err:  # pragma: no cover
        out.append((False, f"jupyter_client not usable: {err}"))
    return out


def main() -> int:
    results = run_checks()
    for ok, message in results:
        print(f"[{'OK' if ok else 'FAIL'}] {message}")
    failed = sum(not ok for ok, _ in results)
    if failed:
        print(f"\n{failed} check(s) failed. Fix them (usually: `rm -rf .venv && make lab`) and run `make check` again.")
        return 1
    print("\nEverything the course needs is here.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
