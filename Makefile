# Developer and CI entry points. `make test` is what CI runs (.ci/run).

PYTHON ?= python3
VENV := .venv
LINT_PATHS := gateway keywords throughput tests bench
DEMO_ARGS ?=
# apt-get needs root; use sudo when we are not root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv postgres observability-tools test demo bench lint

venv: $(VENV)/.installed

# Reinstall when the dependencies change; the stamp records the last successful install. An existing venv is
# kept (re-running venv over it could re-point it at another python3 found on PATH).
$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

# The tests, the demo and the benchmarks start a private cluster (gateway/db/embedded.py): they need the
# server binaries (initdb, pg_ctl, postgres), not a running server.
postgres:
	@if { command -v pg_config >/dev/null 2>&1 && test -x "$$(pg_config --bindir)/initdb"; } \
		|| ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "PostgreSQL server binaries found"; \
	else \
		echo "PostgreSQL server binaries not found; installing"; \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; \
	fi

# Integration tests run a real Prometheus (promtool, scraping) and headless Chromium (the status page).
observability-tools:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 \
		&& command -v chromium >/dev/null 2>&1; then \
		echo "prometheus and chromium found"; \
	else \
		echo "prometheus / chromium not found; installing"; \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus chromium; \
	fi

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)

test: venv postgres observability-tools
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

demo: venv postgres
	$(VENV)/bin/smsgw demo $(DEMO_ARGS)

bench: venv postgres
	$(VENV)/bin/python bench/outbound.py
