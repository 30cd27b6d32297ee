# One-command setup and test. `make setup` makes .venv and installs geoconcept with its
# dev tools (torch 2.14.1 / torchvision 0.29.1 pinned in pyproject.toml).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup test test-fast lint bench reproduce

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# every test (what CI runs), then the 20 slowest; test-fast leaves out the slow, distributed
# and end-to-end tiers (markers in pyproject.toml), for iterating
test: setup
	$(BIN)/pytest -q --durations=20

test-fast: setup
	$(BIN)/pytest -q -m "not slow and not distributed and not e2e"

lint: setup
	$(BIN)/ruff check geoconcept_cli tests benchmarks
	$(BIN)/ruff format --check geoconcept_cli tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python benchmarks/predict_latency.py
	$(BIN)/python benchmarks/explain_latency.py
	$(BIN)/python benchmarks/evaluate_speed.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/embed_images_throughput.py
	$(BIN)/python benchmarks/embed_images_containers.py
	$(BIN)/python benchmarks/where_atlas_speed.py
	$(BIN)/python benchmarks/serve_latency.py
	$(BIN)/python benchmarks/cold_start.py
	$(BIN)/python benchmarks/batch_predict_speed.py
	$(BIN)/python benchmarks/gallery_query.py
	$(BIN)/python benchmarks/embed_concepts_speed.py
	$(BIN)/python benchmarks/limited_query.py
	$(BIN)/python benchmarks/album_speed.py
	$(BIN)/python benchmarks/answering_evaluate.py
	$(BIN)/python benchmarks/leakage_search.py
	$(BIN)/python benchmarks/onnx_parity.py

# The paper's recipe on a GPU machine (see README): 5% of MP-16 -> features -> train with and
# without concepts -> evaluate on Im2GPS3k. Every step skips work that is already done.
# CLIP_OPTS picks the backbone (e.g. --clip-pretrained /path/ViT-L-14.pt without internet);
# EVAL_OPTS passes evaluate options (e.g. --gallery); GPUS=0 DEVICE=cpu runs it on a CPU.
MP16 ?= mp16.csv
MP16_IMAGES ?= mp16
IM2GPS ?= im2gps3k_places365.csv
IM2GPS_IMAGES ?= im2gps3k
FRACTION ?= 0.05
GPUS ?= 1
DEVICE ?= cuda
WORK ?= work
CLIP_OPTS ?=
EVAL_OPTS ?=
GC ?= $(BIN)/geoconcept
TRAIN_OPTS ?= --epochs 10 --batch-size 512 --lr 3e-5 --queue-size 4096

reproduce: setup
	$(GC) subset $(MP16) --fraction $(FRACTION) --seed 0 --out $(WORK)/mp16_subset.csv
	$(GC) embed-images $(WORK)/mp16_subset.csv --images $(MP16_IMAGES) --out $(WORK)/feats_train --gpus $(GPUS) --device $(DEVICE) $(CLIP_OPTS)
	$(GC) embed-images $(IM2GPS) --images $(IM2GPS_IMAGES) --out $(WORK)/feats_test --device $(DEVICE) $(CLIP_OPTS)
	$(GC) embed-concepts concepts/concepts.parquet --out $(WORK)/concepts.safetensors --device $(DEVICE) $(CLIP_OPTS)
	$(GC) train $(WORK)/feats_train --out $(WORK)/run_concepts --concepts $(WORK)/concepts.safetensors --resume --gpus $(GPUS) $(TRAIN_OPTS)
	$(GC) train $(WORK)/feats_train --out $(WORK)/run_geoclip --concepts none --resume --gpus $(GPUS) $(TRAIN_OPTS)
	$(GC) evaluate $(WORK)/feats_test $(WORK)/run_concepts $(WORK)/run_geoclip --json-out $(WORK)/eval.json --device $(DEVICE) $(EVAL_OPTS)
