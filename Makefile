# KaPoW: `make demo` and `make test` are the two commands; everything they need is installed and started here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=


.PHONY: cdc-demo
.PHONY: install services services-stop services-status test unit integration lint demo bench perf chaos browser promtool docs clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@$(BIN)/python -m compileall -q src  # an editable install writes no bytecode; PYTHONDONTWRITEBYTECODE neither
	@touch $@

services:
	@bash scripts/services.sh start

services-stop:
	@bash scripts/services.sh stop

services-status:
	@bash scripts/services.sh status

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# The integration tests alone (real broker and database; a few minutes).
integration: install services
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

# docs/CONFIG.md is generated from the config structs (tests/docs checks that it is current).
docs: install
	$(BIN)/python -m kapow.configdoc

# The console's tests drive Debian's Chromium (Playwright cannot download browsers here); installed once.
browser:
	@command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

# promtool checks and unit-tests the alert rules (tests/docs/test_alert_rules.py); Debian's prometheus package.
promtool:
	@command -v promtool >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus)

test: install services lint browser promtool
	$(BIN)/pytest $(PYTEST_ARGS)

# The long fault-injection run (tests/chaos; the short variants are part of `make test`). One JSON line of
# numbers per scenario goes to KAPOW_CHAOS_RESULTS (docs/RELIABILITY.md is filled from it).
chaos: install services
	KAPOW_CHAOS=long KAPOW_CHAOS_RESULTS=$${KAPOW_CHAOS_RESULTS:-/tmp/kapow-chaos-results.jsonl} \
		$(BIN)/pytest tests/chaos -s $(PYTEST_ARGS)

# Mutation testing (docs/TESTING.md): mutmut changes the core one small mutant at a time (src/kapow/pipeline/,
# postgres/writer, statements, isolate, validate, errors.py, deadletter/) and runs the unit tests and the in-process
# integration tests against each; a mutant no test notices is a gap. Slow (an hour or more on two cores, at the
# lowest priority), so not part of `make test`; run it before resolving work that touches those modules. Prints
# the score per module and fails under 85 %; `.venv/bin/mutmut results` lists the survivors, `mutmut show NAME`
# shows one.
define MUTATION_SCORE
import glob, json, sys
caught = {1, 3, 24, -24, 36, 37, 152, 255}  # killed by a test, timed out, or refused by mypy --strict
counted = []
for path in sorted(glob.glob("mutants/src/kapow/**/*.py.meta", recursive=True)):
    codes = [c for c in json.load(open(path))["exit_code_by_key"].values() if c not in (None, 34)]
    if codes:
        counted += codes
        hit = sum(c in caught for c in codes)
        print(f"{path[len('mutants/src/'):-5]:<36} {hit:>5} / {len(codes):<5} {100 * hit / len(codes):5.1f} %")
hit = sum(c in caught for c in counted)
score = 100 * hit / max(1, len(counted))
print(f"{'all':<36} {hit:>5} / {len(counted):<5} {score:5.1f} %")
sys.exit(0 if counted and score >= 85 else 1)
endef
export MUTATION_SCORE

.PHONY: mutation
mutation: install services
	rm -rf mutants
	PATH="$(CURDIR)/$(BIN):$$PATH" nice -n 19 $(BIN)/mutmut run --max-children 6
	$(BIN)/python -c "$$MUTATION_SCORE"

demo: install services
	$(BIN)/kapow demo

# The benchmark (docs/BENCHMARKS.md; the package kapow_bench in bench/, run as `kapow bench` or
# `python -m kapow_bench`): every workload, the COPY ceiling in each run, the peer, latency, the seed's design and
# the sweep, 3 runs each, medians; about an hour on 2 cores. BENCH_ARGS adds or overrides options
# (kapow bench --help); the plot needs the bench extra (matplotlib). KAPOW_SERVICES_DIR locates the broker's pid
# file for its CPU (default: .services here).
BENCH_ARGS ?=
bench: install services
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/kapow bench --all --json docs/bench-results.json --plot docs/bench-throughput.png $(BENCH_ARGS)

# The speed guard alone (tests/perf, part of `make test`): ratios measured in the same test, about 15 s.
perf: install services
	$(BIN)/pytest tests/perf $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Replicate a table live: PostgreSQL -> Debezium's source connector (Kafka Connect) -> Kafka -> KaPoW -> PostgreSQL.
cdc-demo: install services
	$(BIN)/python scripts/cdc_demo.py
