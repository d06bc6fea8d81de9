"""Random generators derived from their purpose alone, so a replayed edit draws the same."""

from __future__ import annotations

import hashlib
import random


def seeded_rng(*parts: object) -> random.Random:
    """A generator seeded by `parts` alone (run seed, purpose, edit id), joined with ':'."""
    return random.Random(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest())
