# Set-up and the two commands the README names (`make test`: the linter, then the test suite). torch is pinned so that pip takes the CPU build.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cli,onnx,test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/bsnet search

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

.PHONY: install demo test
