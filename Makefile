# Two commands set up a fresh machine (see README):  `make report`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Torch on CPU: keep the pinned CPU wheel; everything else comes from the package extras.
TORCH_PIN := torch==2.13.0

.PHONY: setup report selfcheck test test-fast lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[dev,notebooks]'
	touch $@

# The main job: the toy-world report (GRPO, GRPO+KL, CPGD under off-policy pressure) -> reports/toy_world/index.html
report: setup
	$(BIN)/eureka-kit selfcheck
	$(BIN)/eureka-kit report --out reports/toy_world

selfcheck: setup
	$(BIN)/eureka-kit selfcheck

# The full test suite, slow tests included (this is what CI runs).
test: setup
	$(BIN)/python -m pytest -q

# Inner loop: skip the slow tests.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check eureka_kit tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
