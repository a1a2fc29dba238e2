# SealGate — `make run` starts the gateway on a fresh Debian machine; `make test` runs the suite.
# Everything it needs is installed by these targets: system packages, .venv, a SoftHSM token
# under var/, a development CA, and a demo organisation with a filed seal.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VAR := var
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# prometheus is here for its promtool (no Debian package ships promtool alone), which the
# tests run on config/prometheus/alerts.yml and on the /metrics output.
APT_PACKAGES := python3-venv softhsm2 opensc poppler-utils redis-server openssl fonts-wqy-microhei zbar-tools curl prometheus
export SOFTHSM2_CONF := $(CURDIR)/$(VAR)/softhsm/softhsm2.conf

.PHONY: run test lint bench fuzz-api fuzz-pdf setup system venv token demo clean help

help:
	@echo "make run    set everything up and start the gateway on http://127.0.0.1:8080"
	@echo "make test   set everything up and run the whole test suite (lint included)"
	@echo "make lint   ruff and mypy on gateway/ and plugins/"
	@echo "make bench  throughput/latency benchmarks (writes benchmarks/results/; BENCH_ARGS=--quick)"
	@echo "make fuzz-api  schemathesis and valid lifecycles against a real gateway (FUZZ_ARGS)"
	@echo "make fuzz-pdf  hostile PDFs through sealing and verification (FUZZ_ARGS, e.g. --live)"

run: setup demo
	$(BIN)/sealgate serve

test: setup lint
	$(BIN)/pytest -q -p no:cacheprovider

lint: venv
	$(BIN)/ruff check gateway plugins tests benchmarks
	$(BIN)/mypy

# The benchmark prepares its own token and seals under var/bench/; it needs no demo in var/.
# `make bench BENCH_ARGS=--quick` is a short smoke run.
bench: setup
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# A real gateway in a temporary directory, driven by schemathesis from its own document (about
# a minute and a half with the default 100 examples an operation), then through lifecycles of
# valid requests for --deep-seconds (README: Fuzzing the API). Not part of `make test`: the
# API tests already check every answer against the document, and this adds minutes of load.
# `make fuzz-api FUZZ_ARGS="--max-examples 20 --seed 3 --deep-seconds 600"`; options it does
# not know go to schemathesis.
fuzz-api: setup
	$(BIN)/python -m tests.fuzz.api $(or $(FUZZ_ARGS),--max-examples 100)

# Hostile PDFs mutated for ten minutes, in-process; FUZZ_ARGS="--seconds 300 --live" posts them
# to a real gateway instead. Findings go to a temporary directory (README: Fuzzing).
fuzz-pdf: setup
	$(BIN)/python -m tests.fuzz.pdf_fuzz $(or $(FUZZ_ARGS),--seconds 600)

setup: system venv token

# Installs only what is missing, so a prepared machine does not need the network. Only
# promtool is wanted from the prometheus package: its server is disabled when systemd runs it.
system:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  case " $$missing " in *" prometheus "*) \
	    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then $(SUDO) systemctl disable --now prometheus >/dev/null 2>&1 || true; fi;; \
	  esac; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

token: system
	softhsm/init-token.sh $(VAR)/softhsm sealgate

demo: setup
	$(BIN)/sealgate init --demo

clean:
	rm -rf $(VAR)
