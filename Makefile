# The commands the README names. Everything runs inside .venv, created on first use from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
KERNEL := audio-course
STAMP  := $(VENV)/.installed
LESSON0 := notebooks/00_audio_and_data.ipynb
# Extra arguments for JupyterLab, e.g. make lab LAB_ARGS="--port=8890"
LAB_ARGS ?=
LAB_IP ?= 0.0.0.0
# Serve the whole course folder (lessons, exercises, solutions) and open lesson 00 first.
LAB_OPEN := --ServerApp.root_dir="$(CURDIR)" --ServerApp.default_url=/lab/tree/$(LESSON0)
# JupyterLab refuses to run as root (containers, CI) unless told it may.
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
# Extra arguments for the comparison harness, e.g. make compare COMPARE_ARGS="--size quick --systems audiogen,diffsound"
COMPARE_ARGS ?=
# Extra arguments for the GPU smoke test, e.g. make gpu-smoke GPU_SMOKE_ARGS="--steps 40 --families audiogen,codec";
# GPU_SMOKE_COMPILE=1 trains with torch.compile.
GPU_SMOKE_ARGS ?=
GPU_SMOKE_COMPILE ?=

.PHONY: help install check lab lab-headless test test-float-path-avx2 test-float-path-default lint exercises exercises-check grade course compare gpu-smoke strip clean

help:
	@echo "make lab           set up (first time) and open JupyterLab on lesson 00"
	@echo "make lab-headless  the same for a server: no browser, listens on all interfaces"
	@echo "make test          the whole test suite at quick size (what CI runs)"
	@echo "make check         environment check: [OK]/[FAIL] per package"
	@echo "make exercises     regenerate exercises/ from solutions/"
	@echo "make grade SUB=path/to/notebook-or-folder [CSV=grades.csv]"
	@echo "make course        run every lesson at default size, render HTML under build/, print timings"
	@echo "make compare       every shipped model on the same held-out prompts: table + plot under build/compare"
	@echo "                   [COMPARE_ARGS=\"--size quick\"]"
	@echo "make gpu-smoke     every family's paper config a few steps on one CUDA GPU: steps/s, peak memory,"
	@echo "                   parameters, exact resume [GPU_SMOKE_ARGS=\"--steps 40\"] [GPU_SMOKE_COMPILE=1]"
	@echo "make strip         remove outputs from notebooks before committing"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is needed; found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (audio course)"
	@touch $(STAMP)

install: $(STAMP)

check: $(STAMP)
	$(PY) -m course_lib.check

lab: check
	$(VENV)/bin/jupyter lab $(LAB_OPEN) $(LAB_ROOT) $(LAB_ARGS)

lab-headless: check
	$(VENV)/bin/jupyter lab --no-browser --ip=$(LAB_IP) $(LAB_OPEN) $(LAB_ROOT) $(LAB_ARGS)

test: $(STAMP)
	COURSE_RUN_SIZE=quick $(PY) -m pytest tests notebooks solutions --nbval-lax --nbval-current-env --nbval-cell-timeout=600 --durations=15
	@echo "Rerunning the float-sensitive tests under two other float paths (one CPU core each, side by side):"
	$(MAKE) --no-print-directory --output-sync=target -j2 test-float-path-avx2 test-float-path-default
	$(VENV)/bin/ruff check .

# The tests marked float_path (card re-measures, exercise known answers, choices compared across code paths)
# again, with other float arithmetic than the main run (which uses torch's own threads and CPU kernels): one
# thread, another vector width for torch's kernels, another MKL code path. A new exact float comparison, or a
# tolerance too tight for another CPU, fails here instead of on a student's machine.
FLOAT_PATH_TEST := COURSE_RUN_SIZE=quick $(PY) -m pytest tests -m float_path -q -p no:cacheprovider
test-float-path-avx2: $(STAMP)
	OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE $(FLOAT_PATH_TEST)
test-float-path-default: $(STAMP)
	OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default MKL_CBWR=AVX2 $(FLOAT_PATH_TEST)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

exercises: $(STAMP)
	$(PY) -m course_lib.exercises generate

exercises-check: $(STAMP)
	$(PY) -m course_lib.exercises generate --check

grade: $(STAMP)
	$(PY) -m course_lib.exercises grade $(SUB) $(if $(CSV),--csv $(CSV),)

course: $(STAMP)
	$(PY) -m course_lib.course_runner --out build

compare: $(STAMP)
	$(PY) -m course_lib.compare --out build/compare $(COMPARE_ARGS)

# Not part of `make test`: it needs a CUDA GPU (without one it stops at once with an error line, status 2).
gpu-smoke: $(STAMP)
	$(PY) -m course_lib.train.gpu_smoke $(if $(filter 1 true yes on,$(GPU_SMOKE_COMPILE)),--compile,) $(GPU_SMOKE_ARGS)

strip: $(STAMP)
	$(PY) -m course_lib.course_runner --strip

clean:
	rm -rf build runs .pytest_cache
