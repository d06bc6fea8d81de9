"""GRACE's settings (see `grace/__init__.py` for what they mean together)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import setting
from .._common.facts import FACT_IDENTITY_HELP
from .._common.guard import CLAIM_POOL_HELP, CLAIM_RATE_HELP
from ..context import CALIBRATION_POOLS


@dataclass(frozen=True)
class GraceConfig:
    layer: int | None = setting(None, "layer whose mlp.out output is replaced (negative counts "
                                      "from the end); default: the late-middle layer")
    key: str = setting("mlp.out", "key activation: 'mlp.out' = input of the replaced projection "
                                  "(MLP hidden activation, as in the paper), 'mlp' = input of the "
                                  "MLP block (normalised residual stream)", choices=("mlp.out", "mlp"))
    key_token: str = setting("last", "where a row's key is read: its last prompt token ('last', "
                                      "the paper's choice) or the mean over its prompt tokens "
                                      "('mean')", choices=("last", "mean"))
    eps: float = setting(0.5, "initial deferral radius of a new key (see eps_relative). 0.5: "
                              "chosen on the built-in model's dev stream at its default layer "
                              "(scenarios/dev/grace-eps.toml: generalization flat from 0.5 to "
                              "1.5 with locality 0.998; the smallest of those); the paper "
                              "tunes it per data set", min=0.0)
    eps_relative: bool = setting(True, "eps is a share of the new key's norm (true) or an "
                                       "absolute Euclidean distance (false)")
    claim_rate: float = setting(0.01, CLAIM_RATE_HELP + ". Not in the paper (it tunes eps per "
                                      "data set by hand)", min=0.0, max=1.0,
                                before=1.0)
    claim_pool: str = setting("stream-or-train", CLAIM_POOL_HELP + ". 'stream-or-train': "
                              "chosen on dev organisms (sweeps/dev-claim-pool.toml: tied with "
                              "'stream', which leaves the radius uncalibrated without a pool)",
                              choices=CALIBRATION_POOLS, before="stream")
    conflict: str = setting("coverage", "same-target key within reach: expand its radius "
                                        "('coverage') or move it to the members' mean "
                                        "('moving_average')", choices=("coverage", "moving_average"))
    replace: str = setting("from_key", "positions whose output a retrieved value replaces: the "
                                       "key token and every later one ('from_key'), the key token "
                                       "only ('key'), the prompt span ('prompt'), every real "
                                       "token ('all')", choices=("from_key", "key", "prompt", "all"))
    steps: int = setting(50, "maximum Adam steps to train a value", min=1, max=10_000)
    lr: float = setting(2.0, "Adam learning rate of the value (relative: multiplied by the "
                             "layer output's RMS)", min=0.0)
    stop_loss: float = setting(0.02, "stop training a value once the target loss is below this "
                                     "(or once it stops improving: 0.1% over 8 steps)", min=0.0)
    candidates: int = setting(4, "nearest entries a lookup considers per query; the nearest "
                                 "covering one wins", min=1, max=256)
    approximate_above: int = setting(100_000, "codebook size above which the key index is "
                                              "approximate (HNSW); 0: always exact", min=0)
    use_fact_identity: bool = setting(False, FACT_IDENTITY_HELP, before=True)
