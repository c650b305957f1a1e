# hopgate: the two commands a new user needs are `make demo` and `make test`.
# Both create .venv with everything on first use; `make test` also installs the
# Debian packages the end-to-end tests drive (when run as root with apt-get),
# and builds the browser shim (client_js, with npm: `make js`).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
SYSTEM_PACKAGES ?= nginx haproxy squid chromium gcc libc6-dev python3-dev

.PHONY: demo test check lint typecheck pytest js system-deps clean bench bench-quick

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hopgate demo

test: $(STAMP) system-deps lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict gateway

# Most tests wait on real servers, proxies and timers, not on the CPU: three
# workers (one test file each at a time) bring the suite from ~18 to ~7 min
# on 2 cores. PYTEST_JOBS=0 runs it in one process.
PYTEST_JOBS ?= 3

pytest: $(STAMP) js
	$(BIN)/python -m pytest -n $(PYTEST_JOBS) --dist loadfile $(PYTEST_ARGS)

# Issue 13's benchmark tables beside their anchors (raw aiohttp, python-engineio,
# the direct connection); rewrites docs/benchmarks.md and docs/benchmarks/*.png.
# Under 15 minutes on 2 cores; `make bench-quick` is a ~2-minute smoke run.
# BENCH_ARGS="--tree /work/before --out /tmp/before" measures another checkout.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

# The browser shim: client_js/dist/ from client_js/src/ (esbuild); tests/client_js loads it.
js:
	@command -v npm >/dev/null || { echo "npm not found: the JS shim needs Node 20+ and npm"; exit 1; }
	cd client_js && npm ci --no-audit --no-fund && npm run build

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages:$$missing (run as root, or: sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis client_js/node_modules client_js/dist
