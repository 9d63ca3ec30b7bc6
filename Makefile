# imgsim: `make demo` and `make test` work on a fresh machine with Python >= 3.10, pip and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install demo test clean

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

test: install
	IMGSIM_SHARED=$(SHARED) $(PY) -m pytest -ra

clean:
	rm -rf runs reports/demo/metrics.json .pytest_cache
