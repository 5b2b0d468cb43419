# Two entry points for a fresh machine with only Python: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed

.PHONY: demo test bench clean

# The demo needs the core and the telemetry extra only; the tests and the benchmark add the dev and
# bench extras (pytest, the deploy validators, the Grafana SDK, the peers). An editable install
# compiles the C extension.
$(DEMO_STAMP): pyproject.toml shmq/_ring.c
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[telemetry]'
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml shmq/_ring.c
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/shmq demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/shmq bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
