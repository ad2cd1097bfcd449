# From a clean clone with nothing installed: `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EDGEC := $(VENV)/bin/edgec
DEMO_MODEL ?= vanillanet_5

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	rm -rf out/demo
	$(EDGEC) compile $(DEMO_MODEL) --target cpu -o out/demo --verify
	$(EDGEC) verify out/demo
	$(EDGEC) profile out/demo --runs 50 --warmup 5 --threads 1

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .ruff_cache .hypothesis
