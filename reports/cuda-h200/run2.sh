#!/bin/bash
# device check 2 for issue 17: query overhead and edit cost on the GPU at 10k keys, built-in
# model and a random-init GPT-2 of 24 x 1024 (cost only). Logs and JSON under $OUT.
set -u
T0=$(date +%s)
step() { echo "=== $1 (t=$(( $(date +%s) - T0 )) s)"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
L="python3 -m lifelong.cli"
step big-model
timeout 60 python3 .dev/make_big.py /tmp/big 1024 24
step grace-builtin
timeout 70 $L bench grace --sizes 1000,10000 --edits 10 --queries 64 --device cuda --json $OUT/grace-builtin.json 2>&1 | tail -4
step grace-big
timeout 90 $L bench grace --model /tmp/big --sizes 1000,10000 --edits 10 --queries 64 --device cuda --json $OUT/grace-big.json 2>&1 | tail -4
step edit-big
timeout 80 $L bench edit --method grace --method wise-faiss --method wise --model /tmp/big --edits 10 --query-at 5 --device cuda --json $OUT/edit-big.json 2>&1 | grep -v "^\[bench" | tail -12
step wise-big
timeout 60 $L bench wise --model /tmp/big --method wise-faiss --edits 10 --memories 1,8 --device cuda --json $OUT/wise-big.json 2>&1 | tail -6
step done
