# Social Data Engine developer loop. Needs only python3 (3.11+) and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help venv test lint unit demo bench sandbox clean

help:
	@echo "make demo    - start embedded PostgreSQL + API sandbox, run a full sync as Cloud Scheduler would"
	@echo "              (DEMO_ARGS=--keep-db leaves the database running for psql)"
	@echo "make test    - ruff + pytest (real PostgreSQL, real HTTP to the sandbox)"
	@echo "make bench   - benchmarks (BENCH_ARGS=\"upsert --quick\" to pick); rebuilds BENCHMARKS.md"
	@echo "make sandbox - run the API sandbox in the foreground"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q --upgrade pip
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

unit: $(STAMP)
	@mkdir -p .data; $(PY) -m pytest -q --basetemp=.data/pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'pytest collected no tests' >&2; exit 1; fi; exit $$rc

test: lint unit

demo: $(STAMP)
	$(PY) -m scripts.demo $(DEMO_ARGS)

sandbox: $(STAMP)
	$(PY) -m sandbox

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)
	$(PY) -m bench._report

clean:
	rm -rf $(VENV) .data .pytest_cache .ruff_cache
