#!/bin/bash
# device check 3 for issue 17: GRACE's GPU batch-32 lookup cost after the sketch's products
# moved from numpy's BLAS to torch (one thread pool). Logs and JSON under $OUT.
set -u
T0=$(date +%s)
step() { echo "=== $1 (t=$(( $(date +%s) - T0 )) s)"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
L="python3 -m lifelong.cli"
nproc; python3 -c "import numpy; numpy.show_config()" 2>&1 | grep -i "openblas configuration" | head -1
step prof-before
PROF_OLD=1 timeout 60 python3 reports/cuda-h200/s38/prof_grace.py cuda 1000 $OUT/prof-before.json 2>&1 | grep "^{\|old"
step prof-after
timeout 100 python3 reports/cuda-h200/s38/prof_grace.py cuda 1000,10000 $OUT/prof-after.json 2>&1 | grep "^{"
step grace-builtin
timeout 80 $L bench grace --sizes 1000,10000 --edits 10 --queries 64 --device cuda --json $OUT/grace-builtin.json 2>&1 | tail -3
step big-model
timeout 60 python3 reports/cuda-h200/make_big.py /tmp/big 1024 24
step grace-big
timeout 90 $L bench grace --model /tmp/big --sizes 1000,10000 --edits 10 --queries 64 --device cuda --json $OUT/grace-big.json 2>&1 | tail -3
step cuda-tests
timeout 100 python3 -m pytest tests/test_cuda.py -o addopts="" -q -p no:cacheprovider -x 2>&1 | tail -5
step done
