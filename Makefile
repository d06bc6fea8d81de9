# Convenience targets; each is the same command the README shows.
VENV ?= .venv
TORCH ?= torch==2.13.0

.PHONY: setup quickstart test model streams dev-organisms dev-organisms-bpe

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
	$(VENV)/bin/lifelong streams make --split test --edits 300 --seed 200 -o streams/quickstart.jsonl
	$(VENV)/bin/lifelong streams make --split dev --edits 1000 --seed 101 -o streams/dev/edits-1000.jsonl
	$(VENV)/bin/lifelong streams make --split dev --edits 3000 --seed 102 -o streams/dev/edits-3000.jsonl
	$(VENV)/bin/lifelong streams make --split test --edits 1000 --seed 201 -o streams/test/edits-1000.jsonl
	$(VENV)/bin/lifelong streams make --split test --edits 3000 --seed 202 -o streams/test/edits-3000.jsonl
	$(VENV)/bin/lifelong streams make --split test --edits 10000 --reedit-share 0.55 --seed 203 -o streams/test/edits-10000.jsonl

# The dev streams of real data (they need ../shared/data) and their dev organisms under out/,
# which scenarios/dev/claim-rate-*.toml use (streams/README.md).
dev-organisms: setup
	$(VENV)/bin/lifelong streams import --format counterfact ../shared/data/counterfact/counterfact-train.json --edits 500 -o streams/dev/counterfact-train-500.jsonl
	$(VENV)/bin/lifelong streams import --format knowedit ../shared/data/zsre/knowedit-zsre-test.json --edits 500 -o streams/dev/zsre-knowedit-500.jsonl
	$(VENV)/bin/lifelong pretrain --facts streams/dev/counterfact-train-500.jsonl --config lifelong/organisms/counterfact.toml -o out/organism-counterfact-train-500
	$(VENV)/bin/lifelong pretrain --facts streams/dev/zsre-knowedit-500.jsonl --config lifelong/organisms/zsre.toml -o out/organism-zsre-knowedit-500

# the subword dev organisms (sweeps/dev-serac-claim-rate.toml) and SERAC's dev train splits
dev-organisms-bpe: setup
	$(VENV)/bin/lifelong streams import --format counterfact ../shared/data/counterfact/counterfact-train.json --skip 500 --edits 500 -o streams/dev/counterfact-train-501-1000.jsonl
	$(VENV)/bin/lifelong streams import --format knowedit ../shared/data/zsre/knowedit-zsre-test.json --skip 500 --edits 500 -o streams/dev/zsre-knowedit-501-1000.jsonl
	$(VENV)/bin/lifelong pretrain --facts streams/dev/counterfact-train-500.jsonl --config lifelong/organisms/counterfact-bpe.toml -o out/organism-counterfact-train-500-bpe
	$(VENV)/bin/lifelong pretrain --facts streams/dev/zsre-knowedit-500.jsonl --config lifelong/organisms/zsre-bpe.toml -o out/organism-zsre-knowedit-500-bpe
