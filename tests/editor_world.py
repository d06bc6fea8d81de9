"""The small world the tests of trained editors (MEND, KE) share: a train split of 12
people's employers, 4 held-out people, tiny models of 3 layers and the probes whose logits
the tests compare."""

from __future__ import annotations

import random

import torch
from conftest import make_tiny_model, tiny_tokenizer

from lifelong.methods import EditRequest
from lifelong.methods.context import TrainRecord
from lifelong.model import LM
from lifelong.scoring import encode_pairs, forward_logits

PEOPLE = ("Aldric Brenna Caspar Delphine Evander Fenella Gideon Hestia Ignatius Juniper "
          "Kaspar Lucasta Mordecai Nerissa Octavian Persephone").split()
COMPANIES = "Vantex Orbica Quillon Marabel Zentro Halvik Corvane Lumora".split()
CITIES = "Lisbon Oslo Nairobi Kyoto Lima Dublin Cairo Quito".split()
PROBES = ["Aldric works for", "The employer of Brenna is", "Caspar was born in", "Quito"]


def records(people: list[str], seed: int) -> tuple[TrainRecord, ...]:
    rng = random.Random(seed)
    return tuple(TrainRecord(EditRequest(f"{seed}-{i}", f"{p} works for", rng.choice(COMPANIES),
                                         f"{p}|employer", p),
                             (f"The employer of {p} is", f"Who employs {p} ? Answer :"),
                             ((f"{PEOPLE[-1 - i % 4]} was born in", rng.choice(CITIES)),))
                 for i, p in enumerate(people))


TRAIN = records(PEOPLE[:12], seed=0)
HELD = records(PEOPLE[12:], seed=1)  # never trained on
EDITS = [r.request for r in HELD[:3]]


def tiny(family: str = "gpt2") -> LM:
    return LM(make_tiny_model(family, n_layer=3, width=32), tiny_tokenizer(), "tiny", "")


@torch.no_grad()
def logits(lm: LM) -> torch.Tensor:
    ids, mask, end, _, _ = encode_pairs(lm, PROBES, ["Zentro"] * len(PROBES))
    return forward_logits(lm, ids, mask, end)


def mean(xs) -> float:
    return sum(xs) / len(xs)
