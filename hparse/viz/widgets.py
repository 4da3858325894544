"""ipywidgets explorers with a static fallback: the rendered book shows the static figure, a live kernel the widget."""

from __future__ import annotations

from collections.abc import Callable

import matplotlib.pyplot as plt

__all__ = ["slider_explorer", "static_strip"]


def slider_explorer(render: Callable[[int, object], None], count: int, description: str = "step",
                    figsize=(6, 3.5), start: int = 0):
    """An ``IntSlider`` over ``0..count-1`` that redraws ``render(index, ax)`` on one axis.

    Returns the widget (display it as a cell's last expression). Python callbacks do not run on the static book
    page, so always pair it with :func:`static_strip` of the same ``render``.
    """
    import ipywidgets as widgets

    output = widgets.Output()
    slider = widgets.IntSlider(value=start, min=0, max=max(count - 1, 0), description=description,
                               continuous_update=False)

    def redraw(index: int) -> None:
        with output:
            output.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=figsize)
            render(index, ax)
            plt.show()

    slider.observe(lambda change: redraw(change["new"]), names="value")
    redraw(start)
    return widgets.VBox([slider, output])


def static_strip(render: Callable[[int, object], None], indices, titles=None, size: float = 2.6):
    """The static companion of a slider: ``render(i, ax)`` for each chosen index, side by side."""
    indices = list(indices)
    fig, axes = plt.subplots(1, len(indices), figsize=(size * len(indices), size), squeeze=False)
    for k, (ax, index) in enumerate(zip(axes[0], indices)):
        render(index, ax)
        if titles is not None:
            ax.set_title(titles[k], fontsize=8)
    fig.tight_layout()
    return fig
