#!/bin/bash
# device check 5 for issue 17: GRACE's lookups on the GPU (`Codebook.lookup_on`), the runtime's
# edit timings waiting for the GPU, and the CUDA suite. Logs and JSON under $OUT.
set -u
T0=$(date +%s)
step() { echo "=== $1 (t=$(( $(date +%s) - T0 )) s)"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
L="python3 -m lifelong.cli"
step cuda-tests
timeout 110 python3 -m pytest tests/test_cuda.py -o addopts="" -q -p no:cacheprovider 2>&1 | tail -6
step grace-builtin
timeout 60 $L bench grace --sizes 1000,10000 --edits 5 --queries 64 --device cuda --json $OUT/grace-builtin-gpu-lookup.json 2>&1 | grep keys
step quickstart-grace
timeout 100 $L simulate scenarios/quickstart.toml --method grace --device cuda --quiet --db $OUT/q.db --json $OUT/quickstart-grace-cuda.json 2>&1 | tail -8
step big-model
timeout 40 python3 reports/cuda-h200/make_big.py /tmp/big 1024 24 | tail -1
step grace-big
timeout 60 $L bench grace --model /tmp/big --sizes 1000 --edits 5 --queries 64 --device cuda --json $OUT/grace-big-gpu-lookup.json 2>&1 | grep keys
step done
