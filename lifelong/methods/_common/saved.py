"""A network whose whole state is saved and loaded exactly (trained editors in the cache and
in a method's state)."""

from __future__ import annotations

import torch
from torch import nn


class SavedNetwork(nn.Module):
    """`tensors()` / `load_tensors()` round-trip every parameter and buffer bit for bit;
    loading tensors of another shape (another model's edited weights) is a ValueError."""

    #: what the network is, for the error message
    what = "network"

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer, detached copies (for the cache and `state_dict`)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load `tensors` output exactly (same keys and shapes: a ValueError else)."""
        own = self.state_dict()
        if set(own) != set(tensors) or any(own[k].shape != tensors[k].shape for k in own):
            raise ValueError(f"the saved {self.what} does not fit this model's edited weights")
        for k, v in own.items():
            v.copy_(tensors[k])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())
