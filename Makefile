# Two commands on a fresh machine:  make demo  (the main job on the embedded default)
#                                   make test  (the whole suite)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean redis-server chromium

install: $(STAMP) redis-server chromium

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

# The embedded default runs a real Redis server that tunecluster starts itself; it
# needs the redis-server binary. Debian/Ubuntu as root: installed here with apt.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || [ -n "$$TUNECLUSTER_REDIS_SERVER" ] || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends redis-server >/dev/null; \
	    else echo "please install redis-server (apt-get install redis-server / brew install redis)"; exit 1; fi; }

# The dashboard's browser tests drive Debian's chromium headless (Playwright, no browser
# download); Debian/Ubuntu as root: installed here with apt. Elsewhere those tests skip.
chromium:
	@[ -x /usr/bin/chromium ] || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; \
	    else echo "note: /usr/bin/chromium is missing: the dashboard's browser tests will skip (apt-get install chromium)"; fi; }

demo: install
	$(BIN)/tunecluster run examples/digits.yaml --workers 2

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not e2e"

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports

bench: install
	$(BIN)/python bench/orchestration.py
	$(BIN)/python bench/training_throughput.py

clean:
	rm -rf $(VENV) artifacts .pytest_cache
