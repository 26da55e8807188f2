# Every target sets the environment up first (seconds when it is already there).
PY := .venv/bin/python

.PHONY: setup test test-fast lint demo flops

setup:
	@bash tools/setup_env.sh

test: setup
	$(PY) -m pytest tests

test-fast: setup
	$(PY) -m pytest tests -m "not slow"

lint: setup
	$(PY) -m ruff check .

demo: setup
	$(PY) tools/demo.py

flops: setup
	$(PY) tools/get_flops.py --paper-tables
