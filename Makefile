# From a clean clone with nothing installed: `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EDGEC := $(VENV)/bin/edgec
DEMO_MODEL ?= vanillanet_5
DEMO_PORT ?= 9190
SHELL := /bin/bash

# Debian packages for arm64: the cross compilers and qemu user mode (emulated device, C++ host);
# headless Chromium, which the tests open `edgec profile --html` reports in
DEB_PACKAGES := gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static chromium-headless-shell
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install debian demo test test-fast lint clean

debian:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml constraints.txt | debian
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	rm -rf out/demo out/demo-report.html out/demo-report.png out/demo-arm64 out/demo-binary out/demo-mobile out/demo-tensorrt out/demo-coreml
	$(EDGEC) compile $(DEMO_MODEL) --target cpu -o out/demo --verify --threads 1
	$(EDGEC) verify out/demo
	$(EDGEC) profile out/demo --runs 50 --warmup 5 --threads 1 --html out/demo-report.html --png out/demo-report.png
	$(EDGEC) compile bit_bert_tiny --target x86_64 --backend tvm -o out/demo-binary --threads 1
	$(EDGEC) inspect out/demo-binary
	$(EDGEC) profile out/demo-binary --runs 50 --warmup 5 --threads 1
	$(EDGEC) compile $(DEMO_MODEL) --target mobile -o out/demo-mobile
	$(EDGEC) inspect out/demo-mobile
	$(EDGEC) compile bit_bert_tiny --target tensorrt --precision int8-binary -o out/demo-tensorrt
	$(EDGEC) compile tiny_vit_5m --target coreml -o out/demo-coreml
	$(EDGEC) inspect out/demo-coreml
	$(EDGEC) compile $(DEMO_MODEL) --target arm64 --mcpu cortex-a55 -o out/demo-arm64
	$(EDGEC) device emulate arm64 --prepare-only
	$(EDGEC) device emulate arm64 --port $(DEMO_PORT) & pid=$$!; \
	for i in $$(seq 120); do (echo > /dev/tcp/127.0.0.1/$(DEMO_PORT)) 2>/dev/null && break; sleep 1; done; \
	$(EDGEC) verify out/demo-arm64 --device 127.0.0.1:$(DEMO_PORT); rc=$$?; \
	kill $$pid; wait $$pid; exit $$rc

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# the unit tiers (about 2 minutes): everything not marked slow
test-fast: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .ruff_cache .hypothesis
