# Two commands do everything on a fresh machine:
#   make toy    set up .venv, generate the toy dataset, train + 30-view test a small GC model
#   make test   set up .venv, run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: toy test venv

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e '.[test]'
	touch $@

toy: venv
	$(BIN)/python tools/run_toy.py

test: venv
	$(BIN)/python -m pytest -q -n 2 tests
