#!/bin/bash
# device check for issue 17: CUDA paths. Each step bounded; logs under $OUT.
set -u
T0=$(date +%s)
step() { echo "=== $1 (t=$(( $(date +%s) - T0 )) s)"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
step info
nvidia-smi -L
python3 -c "import torch, transformers, faiss, numpy, click, sqlite_utils; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0)); print('transformers', transformers.__version__, 'faiss', faiss.__version__, 'numpy', numpy.__version__, 'click', click.__version__)"
ls /usr/local/cuda/lib64 2>/dev/null | grep -E "cublas|cudart" | head; python3 -c "import glob; print(glob.glob('/opt/torch/.venv/lib/python3.12/site-packages/nvidia/*/lib/libcublas*'))"
step cuda-tests
timeout 200 python3 -m pytest tests/test_cuda.py -o addopts="" -q -p no:cacheprovider --timeout 150 2>&1 | tee $OUT/cuda-tests.log | tail -40
step quickstart
timeout 150 python3 -m lifelong.cli simulate scenarios/quickstart.toml --method grace --method wise-faiss --device cuda --quiet --db $OUT/q.db --json $OUT/quickstart-cuda.json 2>&1 | tail -30
step bench
timeout 90 python3 -m lifelong.cli bench edit --method grace --method wise-faiss --method wise --device cuda --edits 40 --query-at 10 --json $OUT/bench-cuda.json 2>&1 | tail -25
step done
