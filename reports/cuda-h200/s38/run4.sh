#!/bin/bash
# device check 4 for issue 17: the same bench, old sketch (numpy BLAS) and new (torch), A B A B
set -u
T0=$(date +%s)
step() { echo "=== $1 (t=$(( $(date +%s) - T0 )) s)"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
for r in 1 2; do
  step old-$r
  timeout 60 python3 reports/cuda-h200/s38/bench_old.py bench grace --sizes 1000,10000 --edits 5 --queries 64 --device cuda --json $OUT/old-$r.json 2>&1 | grep keys
  step new-$r
  timeout 60 python3 -m lifelong.cli bench grace --sizes 1000,10000 --edits 5 --queries 64 --device cuda --json $OUT/new-$r.json 2>&1 | grep keys
done
step done
