"""Run the `lifelong` CLI with GRACE's distance sketch as it was before stop 38: its
products in numpy (`sketch_old.py`, beside this file) instead of torch.

    python bench_old.py bench grace --sizes 1000,10000 --edits 5 --device cuda
"""
import importlib.util
import sys
from pathlib import Path

import lifelong.methods._common.sketch as sketch
from lifelong.cli import main


def use_old_sketch() -> None:
    spec = importlib.util.spec_from_file_location("sketch_old", Path(__file__).with_name("sketch_old.py"))
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    sketch.Sketch.lower_bounds, sketch.Sketch._sketch = old.Sketch.lower_bounds, old.Sketch._sketch
    sketch.leading_directions = old.leading_directions


if __name__ == "__main__":
    use_old_sketch()
    sys.argv = ["lifelong"] + sys.argv[1:]
    main()
