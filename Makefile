# The two commands of the README: `make serve` and `make test`. Both set up
# everything they need on a fresh Debian 12 machine, and are fast when nothing
# is missing (each step is skipped when its stamp is newer than its inputs).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

# libcap-dev: python-prctl builds against it. libseccomp2: pyseccomp loads it.
# bubblewrap: the bwrap reference backend. nodejs: the JavaScript runtime.
# python3: the system interpreter the unprivileged test run uses (see tests/security).
# hey: the soak test's steady-load HTTP client (docs/soak.md).
APT_PACKAGES := build-essential python3 libcap-dev libseccomp2 bubblewrap nodejs util-linux hey

# make soak: the soak test at its full length (docs/soak.md); `make test` runs its short form.
SOAK_SECONDS ?= 600

.PHONY: serve test soak bench setup system-packages clean
.DEFAULT_GOAL := test

serve: setup
	$(PY) -m jail_http --host $(HOST) --port $(PORT)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

soak: setup
	SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest tests/soak -s -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	$(PY) -m jail.bench $(BENCH_ARGS)

setup: $(VENV)/.installed

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing system packages:" $$missing; \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Editable install: the cffi extension jail._native is built in place.
# constraints.txt pins every transitive dependency (pip freeze of a good install).
$(VENV)/.installed: $(VENV)/bin/python pyproject.toml setup.py constraints.txt native/*.c native/*.h native/build_native.py | system-packages
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info jail/_native*.so jail/_native.c jail/_zygote_server*.so
