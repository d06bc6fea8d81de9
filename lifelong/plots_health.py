"""The model-health figure: held-out text perplexity relative to the pre-stream model, and
the largest relative weight change, against the number of edits (see `lifelong.health`).
Drawn with the helpers and conventions of `lifelong.plots`."""

from __future__ import annotations

from .plots import BAND_NOTE, MARKER, Plot, _band, _edits_axis, _legend, _new, _png, _seeded, _series


def _health(c: dict, key: str) -> float | None:
    return (c.get("health") or {}).get(key)


#: a panel whose values span more than this factor is drawn on a log scale
LOG_SPAN = 50.0


def _scale(ax, values: list[float]) -> None:
    """A log axis where the values span orders of magnitude (a ratio of 1 beside one of
    1000 would otherwise read as a flat line at 0); zeros (an unchanged model) stay on it
    through a linear stretch below 0.01 (symlog)."""
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > LOG_SPAN:
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_ylim(bottom=0)  # both figures are >= 0


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
        _scale(ax, [y for run in have for y in _series(run, lambda c, k=key: _health(c, k))[1]])
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
                "changed (side memories count as their delta). A panel whose values span more than "
                f"{LOG_SPAN:g}x is drawn on a log scale." + BAND_NOTE * _seeded(have),
                _png(fig))
