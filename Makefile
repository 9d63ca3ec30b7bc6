# imgsim: `make demo` and `make test` work on a fresh machine with Python >= 3.10, pip and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install demo test sweep sweep-full clean

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

# The unit and integration tests, then nbval over every notebook (small default parameters).
test: install
	IMGSIM_SHARED=$(SHARED) $(PY) -m pytest -ra tests notebooks --nbval-lax

sweep: install
	$(PY) -m imgsim sweep experiments/demo.yaml

sweep-full: install
	IMGSIM_DATA=$(SHARED)/data $(PY) -m imgsim sweep experiments/full.yaml

clean:
	rm -rf runs reports/demo/metrics.json .pytest_cache
