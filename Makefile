# `make demo` and `make test` each build .venv from nothing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m examples.saga

lint: $(STAMP)
	$(VENV)/bin/ruff check melange tests bench examples
	$(VENV)/bin/ruff format --check melange

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict melange

# Two test processes, each starting its own brokers; a test file stays in one.
TEST_PROCESSES ?= 2

test: lint typecheck
	$(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile

bench: $(STAMP)
	$(PY) bench/inmemory.py
	$(PY) bench/sqlite.py
	$(PY) bench/sqs.py
	$(PY) bench/rabbitmq.py
	$(PY) bench/saga.py
	$(PY) bench/concurrency.py
	$(PY) bench/telemetry.py
	$(PY) bench/aio.py
	$(PY) bench/outbox.py --start-postgres

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
