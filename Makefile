# mparticle-quarantine-backfill: one entry point for every developer and CI task.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9

.PHONY: venv browser redis test lint format run stop bench clean

venv: $(VENV)/.installed

# Create the virtualenv from the pinned files; re-run only when they change.
# The project's own packages (include/) are installed editable: the DAG imports them like any library, and
# Airflow finds the console plugin and the connection type by the package's entry points. The *.egg-info that
# setuptools builds (before 0.2.0) left in include/ is removed: include/ is on sys.path, and Airflow would find
# the package there a second time, and load the console twice.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install -q --python $(PY) -r requirements.txt -r requirements-dev.txt
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	rm -rf include/*.egg-info
	touch $@

# Chromium and ChromeDriver from Debian's packages, for the console's browser test (no browser download).
browser:
	bash tools/install_browser.sh

# Redis from Debian's package, the broker of the CeleryExecutor test (the test starts and stops its own server).
redis:
	bash tools/install_redis.sh

## make test: set up and run the whole test suite (what CI runs).
test: venv browser redis
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## make run: local S3 (moto) + Events API emulator + seeded data + Airflow standalone on :8080.
run: venv
	$(PY) -m tools.local_stack

# Stops a `make run` started elsewhere (another terminal, or in the background).
stop:
	@if [ -f .local/run.pid ]; then pid=$$(cat .local/run.pid); echo "stopping make run (pid $$pid)"; kill $$pid; \
	else echo "make run is not running"; fi

bench: venv
	$(PY) bench/bench_pipeline.py --floor
	$(PY) bench/bench_stage_files.py
	$(PY) bench/bench_send.py

clean:
	rm -rf $(VENV) .local .pytest_cache .ruff_cache .hypothesis
