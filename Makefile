# Every target runs scripts/setup first: idempotent, prints what it does.
VENV := .venv/bin
PYTEST_ARGS ?=

.PHONY: setup demo test lint proto bench bench-verdict clean-lab

setup:
	./scripts/setup

# Installs what is missing, starts the lab containers and opens the console on them.
demo: setup
	$(VENV)/ctconsole lab up
	$(VENV)/ctconsole

# Installs what is missing and runs the whole test suite. Tests that need root or
# CRIU fail (rather than skip) here: CTCONSOLE_STRICT=1.
test: setup
	CTCONSOLE_STRICT=1 $(VENV)/python -m pytest $(PYTEST_ARGS)

lint:
	$(VENV)/ruff check ctconsole tests benchmarks
	$(VENV)/mypy ctconsole

# Regenerate the Python modules from proto/*.proto (they are committed).
proto:
	$(VENV)/python -m ctconsole.protogen

# The quick benchmarks (a few minutes each at most). verdict.py runs CRIU's whole ZDTM
# static suite twice (15-20 min), so it has its own target.
bench: setup
	for b in benchmarks/*.py; do \
	  case $$b in */verdict.py) continue;; esac; \
	  $(VENV)/python $$b || exit 1; \
	done

bench-verdict: setup
	$(VENV)/python benchmarks/verdict.py

clean-lab:
	$(VENV)/ctconsole lab down
