VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint run bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check api workers shared tests bench deploy snapctl
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy bench
	$(VENV)/bin/lint-imports --no-cache

test: lint
	$(VENV)/bin/pytest -q

run: $(STAMP)
	$(PY) deploy/run.py

bench: $(STAMP)
	$(PY) bench/engine.py
	$(PY) bench/api.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
