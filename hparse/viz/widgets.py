"""ipywidgets explorers with a static fallback: the rendered book shows the static figure, a live kernel the widget.

An explorer draws into an ``ipywidgets.Image`` (a PNG rendered from a matplotlib ``Figure`` made without pyplot),
not into an ``ipywidgets.Output`` area. Output widgets capture messages while the notebook is executed
non-interactively, and notebook executors (nbclient, hence the book build) can then wait for the full cell timeout
before moving on; an Image widget is plain widget state, so executing an explorer cell costs one drawing.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["figure_explorer", "slider_explorer", "static_strip", "render_png"]


def render_png(draw: Callable[[Figure], None], figsize=(6, 3.5), dpi: int = 90) -> bytes:
    """``draw(fig)`` on a fresh off-screen figure; returns the PNG bytes (nothing is shown inline)."""
    fig = Figure(figsize=figsize)
    draw(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def figure_explorer(draw: Callable[..., None], controls: dict, figsize=(6, 3.5), dpi: int = 90):
    """Redraw ``draw(fig, **values)`` whenever one of the ``controls`` (name -> widget with ``.value``) changes.

    Returns the widget box (display it as a cell's last expression). Python callbacks do not run on the static
    book page, so pair every explorer with a static figure of a few chosen settings.
    """
    import ipywidgets as widgets

    image = widgets.Image(format="png")

    def redraw(_change=None) -> None:
        values = {name: control.value for name, control in controls.items()}
        image.value = render_png(lambda fig: draw(fig, **values), figsize=figsize, dpi=dpi)

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox(list(controls.values())), image])


def slider_explorer(render: Callable[[int, object], None], count: int, description: str = "step",
                    figsize=(6, 3.5), start: int = 0):
    """An ``IntSlider`` over ``0..count-1`` that redraws ``render(index, ax)`` on one axis.

    Always pair it with :func:`static_strip` of the same ``render`` for the static page.
    """
    import ipywidgets as widgets

    slider = widgets.IntSlider(value=start, min=0, max=max(count - 1, 0), description=description,
                               continuous_update=False)
    return figure_explorer(lambda fig, index: render(index, fig.add_subplot()), {"index": slider}, figsize=figsize)


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
