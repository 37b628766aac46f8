# Every target sets up what it needs on a fresh machine: system tools (as root, via apt-get) and
# the virtualenv in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SYSTEM_TOOLS := curl nginx haproxy wrk hey h2load iptables ip promtool
APT_PACKAGES := curl nginx libnginx-mod-stream haproxy wrk hey nghttp2-client iptables iproute2 prometheus procps

.PHONY: demo test lint unit bench system-deps clean

demo: $(STAMP)
	$(BIN)/sidecar demo

test: $(STAMP) system-deps lint
	$(BIN)/pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check sidecar tests benchmarks
	$(BIN)/mypy
	$(BIN)/mypy --strict benchmarks/*.py

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

bench: $(STAMP) system-deps
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python benchmarks/run.py

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Install the tools the tests drive when they are missing and we can (root with apt-get).
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing system packages for:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	  else \
	    echo "missing tools:$$missing (install: apt-get install $(APT_PACKAGES))"; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
