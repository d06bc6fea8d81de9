"""Memory subsystems (editing methods): one module or folder per method behind the contract
of `base.py` (core Protocol + optional capabilities), found by the registry; shared parts in
`_common/`; what a method is attached with in `context.py`. Adding one:
docs/adding-a-method.md."""

from .base import (
                   BatchEditing,
                   Consolidating,
                   EditReceipt,
                   EditRequest,
                   Memory,
                   MemoryBase,
                   Retractable,
                   Routing,
                   UnknownEdit,
                   WeightDeltas,
                   consolidate_memory,
                   edit_batch,
                   retract_edit,
                   side_weight_deltas,
                   tensor_bytes,
)
from .context import AttachContext, Cache, TrainRecord
from .registry import available_methods, build_method, current_name, get_method

__all__ = ["AttachContext", "BatchEditing", "Cache", "Consolidating", "EditReceipt",
           "EditRequest", "Memory", "MemoryBase", "Retractable", "Routing", "TrainRecord",
           "UnknownEdit", "WeightDeltas", "available_methods", "build_method", "current_name",
           "consolidate_memory", "edit_batch", "get_method", "retract_edit", "side_weight_deltas",
           "tensor_bytes"]
