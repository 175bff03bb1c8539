# Entry commands. From a fresh Debian machine (as root):
#   make demo    venv, local stack, simulated glass line, pipeline; Ctrl-C stops the demo
#   make test    venv, local stack, the whole suite, then lint
#   make down    stop the stack (Kafka, Mosquitto);  make clean  also removes .stack/
# The stack keeps running between commands: `make test` twice starts it once.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STACK := $(PY) -m data_ingestion stack
CONFIG ?= data_ingestion_config.json
# Another broker on the default ports? `make test KAFKA_PORT=19092 MQTT_PORT=11883`
# (the test fixtures find the stack's ports through `stack status`).
KAFKA_PORT ?= 9092
MQTT_PORT ?= 1883

.PHONY: help venv system-deps stack lint test demo bench down clean foreign-opcua foreign-modbus

help:
	@echo "make demo | test | lint | bench | stack | down | clean | venv | system-deps | flink | test-flink"

# Mosquitto, socat (the serial line of the Modbus RTU tests), Prometheus and
# Chromium (the monitoring tests scrape /metrics and load the status page) and
# the venv module come from apt; Java, Maven and Go are checked only: Debian's Go is too old to
# build Prism.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v socat >/dev/null || missing="$$missing socat"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi
	@ok=1; \
	command -v java >/dev/null || { echo "java is missing: install Java 17+ (apt-get install openjdk-17-jre-headless)"; ok=0; }; \
	command -v mvn >/dev/null || { echo "mvn is missing: install Maven 3.8+ (apt-get install maven); it fetches the Kafka jars"; ok=0; }; \
	command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || { echo "go is missing: install Go 1.22+ from go.dev; it builds the Prism runner"; ok=0; }; \
	[ $$ok = 1 ] || { echo "system-deps: install the tools above, then rerun make"; exit 1; }

venv: $(STAMP)

# Reinstalls only when the requirements or the packaging change.
$(STAMP): requirements.txt requirements-dev.txt $(wildcard setup.py pyproject.toml setup.cfg) | system-deps
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q -e .
	touch $@

stack: system-deps venv
	$(STACK) jars
	$(STACK) prism
	$(STACK) up --kafka-port $(KAFKA_PORT) --mqtt-port $(MQTT_PORT)

lint: venv
	$(VENV)/bin/black --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/flake8 .
	$(VENV)/bin/mypy .

# A local Flink 1.19 session cluster (JobManager, TaskManager, Python worker pool on
# 127.0.0.1; REST on 8082) and the Beam job server jar, both once into .stack/flink/.
# `$(PY) -m data_ingestion flink down` stops it.
.PHONY: flink flink-install test-flink
flink: flink-install
	$(PY) -m data_ingestion flink up

# Flink 1.19 from PyPI and the job server jar (Maven), once into .stack/flink/:
# the Flink tests start private session clusters from them.
flink-install: system-deps venv
	$(PY) -m data_ingestion flink install

# The Flink tests alone (about 4 minutes; `make test` runs them too).
test-flink: stack flink-install
	$(VENV)/bin/pytest -q $(FLINK_TESTS)

# The node-opcua server of tests/integration/test_opcua_foreign_server.py (the
# test skips without node); npm ci again only when the lock file changed.
foreign-opcua:
	@cd tests/foreign_opcua; \
	if ! command -v npm >/dev/null; then \
	  echo "foreign-opcua: npm is missing (without node the node-opcua server tests skip)"; \
	elif [ ! -f node_modules/.installed ] || [ package-lock.json -nt node_modules/.installed ]; then \
	  npm ci --no-audit --no-fund && touch node_modules/.installed; \
	fi

# The modbus-serial (Node.js) server of tests/integration/test_modbus_foreign_device.py
# (the test skips without node); serialport, an optional native dependency, is left out.
foreign-modbus:
	@cd tests/foreign_modbus; \
	if ! command -v npm >/dev/null; then \
	  echo "foreign-modbus: npm is missing (without node the modbus-serial server test skips)"; \
	elif [ ! -f node_modules/.installed ] || [ package-lock.json -nt node_modules/.installed ]; then \
	  npm ci --no-audit --no-fund --omit=optional && touch node_modules/.installed; \
	fi

FLINK_TESTS := tests/integration/test_flink.py tests/integration/test_template_submit.py
FLINK_TEST_LOG := .stack/test-flink.log

# The Flink tests run beside the rest: they mostly wait for JVMs and
# checkpoints, and one after the other the suite would pass 20 minutes.
# Their output follows the rest's.
test: stack flink-install foreign-opcua foreign-modbus
	@$(VENV)/bin/pytest -q -p no:cacheprovider $(FLINK_TESTS) >$(FLINK_TEST_LOG) 2>&1 & flink=$$!; \
	status=0; $(VENV)/bin/pytest -q $(addprefix --ignore=,$(FLINK_TESTS)) || status=$$?; \
	wait $$flink || status=$$?; \
	echo "--- $(FLINK_TESTS) ---"; cat $(FLINK_TEST_LOG); exit $$status
	$(MAKE) --no-print-directory lint

demo: stack
	$(PY) -m data_ingestion demo --config $(CONFIG)

bench: stack
	$(PY) -m benchmarks

# Without a venv nothing can have been started by `stack up`.
down:
	@if [ -x $(PY) ]; then $(STACK) down; fi

clean: down
	rm -rf .stack
