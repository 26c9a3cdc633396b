# On a fresh machine each of these works alone:
#   make demo    what running needs only (tunecluster + tensorflow-cpu, ~1.7 GB installed),
#                then the main job on the embedded default
#   make test    everything the tests need (the dev extras, redis-server, chromium), then
#                the whole suite
#   make lint    the dev extras, then ruff and import-linter
#   make images-offline   the compose images built without any registry (docs/deploy.md)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# One stamp per install level: the dev one (a superset) implies the runtime one.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
PIP := $(BIN)/pip install -q --disable-pip-version-check

.PHONY: install install-dev demo test test-fast lint bench clean redis-server chromium \
	images-offline

# What running tunecluster needs: the package and the cpu TensorFlow, plus redis-server
# for the embedded default. Afterwards: source .venv/bin/activate (tunecluster on PATH).
install: $(RUN_STAMP) redis-server

# What the tests, the linters and the benchmarks need on top.
install-dev: $(DEV_STAMP) redis-server chromium

$(BIN)/python:
	@$(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --disable-pip-version-check --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing tunecluster and tensorflow-cpu into $(VENV) (~1.7 GB; a few minutes) ..."
	@$(PIP) -e '.[cpu]'
	@touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing tunecluster with the test, bench and lint extras into $(VENV) (~2.9 GB) ..."
	@$(PIP) -e '.[dev]'
	@touch $@ $(RUN_STAMP)

# The embedded default runs a real Redis server that tunecluster starts itself; it
# needs the redis-server binary. Debian/Ubuntu as root: installed here with apt.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || [ -n "$$TUNECLUSTER_REDIS_SERVER" ] || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      echo "installing redis-server (apt) ..."; \
	      apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends redis-server >/dev/null; \
	    else echo "please install redis-server (apt-get install redis-server / brew install redis)"; exit 1; fi; }

# The dashboard's browser tests drive Debian's chromium headless (Playwright, no browser
# download); Debian/Ubuntu as root: installed here with apt. Elsewhere those tests skip.
chromium:
	@[ -x /usr/bin/chromium ] || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      echo "installing chromium (apt) ..."; \
	      apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; \
	    else echo "note: /usr/bin/chromium is missing: the dashboard's browser tests will skip (apt-get install chromium)"; fi; }

demo: install
	$(BIN)/tunecluster run examples/digits.yaml --workers 2

test: install-dev
	$(BIN)/python -m pytest -q

test-fast: install-dev
	$(BIN)/python -m pytest -q -m "not e2e"

lint: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports

bench: install-dev
	$(BIN)/python bench/orchestration.py
	$(BIN)/python bench/training_throughput.py

# The compose images without any registry (air-gapped hosts): a Docker engine (started
# when root + apt), a debootstrapped base image, a wheelhouse from PyPI, an offline build,
# and .env pointed at the images. Then: docker compose up -d --wait (docs/deploy.md).
images-offline:
	@bash scripts/offline-images.sh images

clean:
	rm -rf $(VENV) artifacts .pytest_cache
