# Two entry points for a fresh machine with only Python: `make demo` and `make test`.
# `make demo` installs what the demo needs (numpy, pyzmq and the telemetry extra); `make test` and
# `make bench` add the dev and bench extras (pytest, the Grafana SDK, iceoryx2, faster-fifo).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# An editable install compiles the C extension once, in place.
$(DEMO_STAMP): pyproject.toml shmq/_ring.c | $(PY)
	$(PY) -m pip install --quiet -e '.[telemetry]'
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml shmq/_ring.c | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP) $(DEMO_STAMP)  # dev includes the telemetry extra

demo: $(DEMO_STAMP)
	$(VENV)/bin/shmq demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/shmq bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
