VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint browser promtool run bench clean

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

# Two test processes (TEST_WORKERS=1 for one), each file whole on one of them (its
# module-scoped service started once); tests/conftest.py hands out the slowest first.
TEST_WORKERS ?= 2

test: lint browser promtool
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile

# The console's browser tests drive Debian's chromium through chromium-driver. Run as root
# (CI), make test installs them when missing; elsewhere those tests are skipped, saying how.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	  else \
	    echo "no chromium/chromedriver: the browser tests will be skipped" \
	      "(as root: apt-get install chromium chromium-driver)" >&2; \
	  fi; \
	fi

# promtool (Debian's prometheus package; its service is not started in a container) checks
# deploy/'s alert rules in tests/e2e/test_dashboards.py; installed the same way.
promtool:
	@if ! command -v promtool >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus \
	      || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	           --no-install-recommends prometheus; }; \
	  else \
	    echo "no promtool: the alert-rule check will be skipped" \
	      "(as root: apt-get install prometheus)" >&2; \
	  fi; \
	fi

run: $(STAMP)
	$(PY) deploy/run.py

bench: $(STAMP)
	$(PY) bench/engine.py
	$(PY) bench/api.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
