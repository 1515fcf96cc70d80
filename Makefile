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

.PHONY: venv demo test heldin heldout bench clean-venv

$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/hypersteer demo --dump_dir dumps/demo

test: venv
	$(PY) -m pytest -q tests

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

bench: venv
	$(PY) benchmarks/bench_train.py

clean-venv:
	rm -rf $(VENV)
