"""The model-health figure: held-out text perplexity relative to the pre-stream model, and
the largest relative weight change, against the number of edits (see `lifelong.health`).
Drawn with the helpers and conventions of `lifelong.plots`."""

from __future__ import annotations

from .plots import BAND_NOTE, MARKER, Plot, _band, _edits_axis, _legend, _new, _png, _seeded, _series


def _health(c: dict, key: str) -> float | None:
    return (c.get("health") or {}).get(key)


def health_plot(runs) -> Plot | None:
    """Two panels, each drawn only for runs that recorded it."""
    panels = [("ppl_ratio", "Held-out text perplexity / before the stream", "ratio (1 = unchanged)"),
              ("weight_delta_max", "Largest weight change |W - W0| / |W0|", "relative change")]
    panels = [p for p in panels if any(_series(r, lambda c, k=p[0]: _health(c, k))[0] for r in runs)]
    if not panels:
        return None
    have = [r for r in runs if any(_series(r, lambda c, k=k: _health(c, k))[0] for k, _, _ in panels)]
    fig, axes = _new(ncols=len(panels), width=5.0 * len(panels) + 1, height=3.8)
    for ax, (key, title, ylabel) in zip(axes, panels):
        for run in have:
            def series(r, key=key):
                return _series(r, lambda c: _health(c, key))
            ax.plot(*series(run), color=run.colour, lw=1.6, **MARKER["-"])
            _band(ax, run, series)
        _edits_axis(ax, have)
        ax.set_title(title)
        ax.set_xlabel("edits applied (count)")
        ax.set_ylabel(ylabel)
        if key == "ppl_ratio":
            ax.axhline(1.0, color="#888", lw=0.8, ls=":")
    _legend(fig, have)
    return Plot("health", "Model health against the number of edits",
                "Left: perplexity of held-out text (for the built-in model: never-changing facts in "
                "phrasings it never trained on; for a model without a world, such as an "
                "organism: the run's probed locality prompts with their recorded answers; "
                "answers scored) over the pre-stream model's: the "
                "collapse detector. Right: the largest relative change of any weight the method "
                "changed (side memories count as their delta)." + BAND_NOTE * _seeded(have),
                _png(fig))
