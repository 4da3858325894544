"""Visualisation: overlays, keypoints and skeletons, grids, and widget explorers with static fallbacks."""

from .overlay import (
    draw_boxes,
    draw_keypoints,
    instance_palette,
    overlay_instances,
    overlay_person_parts,
    overlay_semantic,
    render_prediction,
    sample_grid,
    save_figure,
    show_sample,
    to_numpy_image,
    write_sample_grid,
)
from .widgets import slider_explorer, static_strip
