"""Memory subsystems (editing methods). One file per method; see `base.py` for the Protocol."""

from .base import AttachContext, EditReceipt, EditRequest, Memory, MemoryBase
from .registry import available_methods, build_method, get_method

__all__ = ["AttachContext", "EditReceipt", "EditRequest", "Memory", "MemoryBase",
           "available_methods", "build_method", "get_method"]
