# Entry points, all safe on a fresh machine: `make demo`, `make lint` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# redis-server: the Celery broker and result backend of tests/e2e/test_scale_out.py.
# xxhash: xxhsum, with which the tests check each EPN's manifest as an admin would (`xxhsum -c`).
SYSTEM_PACKAGES := rsync openssh-server openssh-client postgresql redis-server xxhash
# Debian's Chromium for tests/e2e/test_ui_browser.py, and its chromedriver, through which Selenium clicks
# in tests/e2e/test_ui_click.py (headless, both named by path: nothing downloads a browser or a driver).
BROWSER_PACKAGES := chromium chromium-driver

.PHONY: setup system-packages browser-packages demo lint test test-unit test-fast clean-demo

system-packages:
	@if ! command -v rsync >/dev/null || [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null \
		|| ! command -v ssh-keygen >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| ! command -v redis-server >/dev/null || ! command -v xxhsum >/dev/null; then \
		echo "installing $(SYSTEM_PACKAGES) with apt"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	fi

browser-packages:
	@if ! command -v chromium >/dev/null || [ ! -x /usr/bin/chromedriver ]; then \
		echo "installing $(BROWSER_PACKAGES) with apt"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(BROWSER_PACKAGES) >/dev/null; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# uv installs the Dagster stack in seconds; plain pip is the fallback. uv, unlike pip, leaves the
# bytecode to the first import, which never writes it where PYTHONDONTWRITEBYTECODE is set (as in
# many containers): every process, each test run included, would compile Dagster's modules again.
$(VENV)/.installed: pyproject.toml assyncy-dagster-demo/pyproject.toml | $(BIN)/python
	@if $(BIN)/pip install -q uv 2>/dev/null; then \
		$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[demo,test,scale-out,lint]' -e ./assyncy-dagster-demo; \
	else \
		$(BIN)/pip install -q -e '.[demo,test,scale-out,lint]' -e ./assyncy-dagster-demo; \
	fi
	touch $@

setup: system-packages $(VENV)/.installed

# One watch cycle, then the Dagster UI with the stand-ins up until Ctrl-C.
# `make demo DEMO_ARGS=--once` stops after the cycle.
demo: setup
	$(BIN)/python -m assyncy_dagster_demo.demo $(DEMO_ARGS)

# Style and types: ruff on all the Python (assyncy_dagster, tests, benchmarks), mypy on the package.
# The rules and the checker's settings are in pyproject.toml.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Four workers on 2 cores: most tests wait on real servers and subprocesses, not on the CPU;
# longest first, one test at a time (see tests/conftest.py).
# The package's own bytecode too: where PYTHONDONTWRITEBYTECODE is set, each of the many dagster
# processes a test starts would compile the editable checkout's modules again.
test: setup browser-packages
	$(BIN)/python -m compileall -q assyncy_dagster assyncy-dagster-demo/assyncy_dagster_demo >/dev/null
	$(BIN)/pytest -q -p no:cacheprovider -n 4 --maxschedchunk 1 --durations=25

# The unit tier alone: plain logic and the assets with in-memory fakes, nothing started, so it
# needs only the venv (no apt packages, no browser) and runs in seconds.
test-unit: $(VENV)/.installed
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

test-fast: setup
	$(BIN)/pytest -q -p no:cacheprovider -n 2 -m "not slow"

clean-demo:
	rm -rf demo
