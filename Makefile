# make demo — set everything up and run the whole story on Fashion-MNIST
# make test — set everything up and run the test suite
# make bench — run the benchmarks (writes benchmarks/results/)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv data system demo demo-quick test bench clean proto

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@bash scripts/check-disk.sh $(dir $(abspath $(VENV))) 5
	$(PY) -m pip install --quiet --no-cache-dir --upgrade pip
	$(PY) -m pip install --quiet --no-cache-dir -e '.[all,dev]'
	touch $(STAMP)

data:
	bash scripts/ensure-data.sh

system:
	bash scripts/ensure-system.sh

demo: venv data
	$(VENV)/bin/hetsearch demo $(DEMO_ARGS)

demo-quick: venv data
	$(VENV)/bin/hetsearch demo --quick

test: venv data system
	$(PY) -m pytest -q $(TEST_ARGS)

bench: venv data system
	$(PY) -m benchmarks.run_all

proto: venv
	$(PY) -m hetsearch.protogen

clean:
	rm -rf $(VENV) *.egg-info build dist .pytest_cache
