# imgsim: `make demo` and `make test` work on a fresh machine with Python >= 3.10, pip and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install browser demo test bench sweep sweep-full training-cv imc clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m imgsim demo

# Debian's Chromium for the end-to-end browser test (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || apt-get install -y -q chromium >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) \
	  || echo "*** chromium could not be installed here: the browser test will be SKIPPED ***"

# The unit and integration tests, the browser test, then nbval over every notebook (small defaults).
test: install browser
	IMGSIM_SHARED=$(SHARED) $(PY) -m pytest -ra tests notebooks --nbval

# Benchmarks: one table of ratios, results in benchmarks/results/ (OpenVINO is optional).
bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m benchmarks --data $(SHARED)/data

sweep: install
	$(PY) -m imgsim sweep experiments/demo.yaml

sweep-full: install
	IMGSIM_DATA=$(SHARED)/data $(PY) -m imgsim sweep experiments/full.yaml

# Issue 12's cross-validated training recipes (experiments/training_cv.yaml) → reports/training/.
training-cv: install
	IMGSIM_DATA=$(SHARED)/data IMGSIM_RUNS_DIR=$(abspath runs/training_cv) \
	  $(PY) -m imgsim sweep experiments/training_cv.yaml
	$(PY) -m imgsim crossval --from-sweep reports/sweeps/training_cv --report-dir reports/training

imc: install
	IMGSIM_DATA=$(SHARED)/data IMGSIM_IMC_WORK=$(abspath runs/imc-work) $(PY) -m imgsim sweep experiments/imc.yaml

clean:
	rm -rf runs reports/sweeps .pytest_cache
