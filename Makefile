# `make demo` and `make test` work on a machine that has only Python 3.11: they create .venv when it is missing.
PYTHON_SYSTEM ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: install demo test bench demo-assets demo-results

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -r requirements.txt
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) main_task_arithmetic.py

demo-results: install
	$(PY) -m src.demo.publish

test: install
	$(PY) -m pytest -q
