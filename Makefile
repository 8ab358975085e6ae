# The two commands of the README: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-timebatch

.PHONY: run test lint install bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/timebatch run

lint: $(STAMP)
	$(BIN)/ruff check api worker shared tests migrations bench
	$(BIN)/ruff format --check api worker shared tests migrations bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# Starts its own servers and stack; BENCH_ARGS=--quick for a short run.
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# A randomized chaos soak on a stack of its own, on each broker: SOAK_S seconds each (default
# 300), SOAK_SEED to replay a run (each run prints its seed). Needs redis-server and a RabbitMQ
# (TEST_AMQP_URL, default the machine's); both runs always happen, either failing fails it.
SOAK_S ?= 300
SOAK_SEED ?=
soak: $(STAMP)
	status=0; \
	for broker in redis amqp; do \
		SOAK_S=$(SOAK_S) SOAK_SEED=$(SOAK_SEED) $(BIN)/python -m tests.soak --broker $$broker || status=1; \
	done; \
	exit $$status

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
