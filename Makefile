# Convenience targets; each is the same command the README shows.
VENV ?= .venv
TORCH ?= torch==2.13.0

.PHONY: setup quickstart test model streams

$(VENV)/bin/lifelong:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH) -e ".[dev]"

setup: $(VENV)/bin/lifelong

quickstart: setup
	$(VENV)/bin/lifelong simulate scenarios/quickstart.toml

test: setup
	$(VENV)/bin/python -m pytest

# Rebuild the shipped model and streams (deterministic; see README "The built-in model").
model: setup
	$(VENV)/bin/lifelong pretrain --config lifelong/builtin/pretrain.toml -o lifelong/builtin

streams: setup
	$(VENV)/bin/lifelong streams make --edits 300 --seed 0 -o streams/quickstart.jsonl
	$(VENV)/bin/lifelong streams make --edits 1000 --seed 1 -o streams/edits-1000.jsonl
	$(VENV)/bin/lifelong streams make --edits 3000 --seed 2 -o streams/edits-3000.jsonl
