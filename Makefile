# The two commands: `make demo` (the local demo) and `make test` (the whole suite). Both set up first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint proto bench vm-test clean-host
setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/unlinkwatch demo

test: setup
	@bash scripts/test.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(PY) scripts/typecheck.py

proto: setup
	@bash scripts/gen-proto.sh

bench: setup clean-host
	$(PY) -m bench

# What killed runs of the suite, the bench, the demo or the Dockerfile replay left (unlinkwatch/runstate.py).
clean-host:
	@/usr/bin/python3 scripts/clean-host.py
