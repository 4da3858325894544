# ---
# jupyter:
#   jupytext:
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # SynthCrowd: a crowd you can generate
#
# The real benchmarks of instance-level human parsing, CIHP {cite:p}`cihp2018`, MHP v2.0 {cite:p}`mhp2018` and
# PASCAL-Person-Part {cite:p}`pascalpersonpart2014`, need downloads, licences and hours of GPU time ({doc}`01b_real_datasets`
# reads them). A book whose every chapter must run in seconds on a laptop, and a test suite that must run offline,
# need something else: a dataset that is **generated**, the same on every machine, and still **hard in the ways
# crowds are hard**:
#
# - people **occlude each other**, so a person's ground truth is only what is left visible, and boxes overlap;
# - people come at **many scales**, near and far, and are **cut by the image border**;
# - **left and right** are the person's own, so a person seen from the back has their left arm on the image's left;
# - **colour alone does not solve parsing**: the background is cluttered with shapes painted in skin, hair and
#   clothing colours, and clothes carry stripes, checks and mottled textures.
#
# `hparse.data.SynthCrowd` renders such scenes procedurally on CIHP's 20 labels with COCO-17 keypoints
# {cite:p}`cocokeypoints2014`. This chapter builds one image step by step (skeleton, shaped parts, clothing, clutter,
# the z-buffer), then measures the dataset: people per image, occlusion, part frequencies, and what the `crowding`
# knob does.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

from hparse.data import CIHP_LABELS, SynthCrowd
from hparse.data.synth import SPLITS, synth_statistics
from hparse.data.synth_render import (
    JOINT_LIMITS,
    KEYPOINT_NAMES,
    POSES,
    SEGMENTS,
    VIEWS,
    decode,
    person_primitives,
    rasterize,
    shade,
    solo_scene,
)
from hparse.data.transforms import hflip_sample
from hparse.engine import find_results, get_profile
from hparse.viz import (
    draw_boxes,
    draw_keypoints,
    overlay_instances,
    overlay_semantic,
    sample_grid,
    show_sample,
    slider_explorer,
    static_strip,
    to_numpy_image,
)

profile = get_profile()
labels = CIHP_LABELS
SIZE = profile.image_size
STATS_IMAGES = {"smoke": 24, "cpu": 300, "gpu": 1000}[profile.name]
SWEEP_IMAGES = {"smoke": 8, "cpu": 60, "gpu": 200}[profile.name]
print(f"profile {profile.name}: images of {SIZE}px, {STATS_IMAGES} images for statistics, "
      f"{SWEEP_IMAGES} per crowding level")


def rgb(scene, raster):
    """The shaded image of a rasterised scene as a (3, H, W) tensor, like a sample's ``image``."""
    return torch.from_numpy(shade(scene, raster.code, raster.codes))

# %% [markdown]
# ## The data contract
#
# Every dataset of `hparse` returns the same dictionary per image, so a model or a metric never needs to know where
# its data came from:
#
# | key | type | meaning |
# |---|---|---|
# | `image` | float32 (3, H, W) in [0, 1] | RGB |
# | `semantic` | int64 (H, W) | part label per pixel, 0 background, 255 ignore (SynthCrowd never uses 255) |
# | `instances` | int64 (H, W) | person id per pixel, 0 background, 1..N persons |
# | `boxes` | float32 (N, 4) | xyxy box of person k+1 in row k |
# | `keypoints` | float32 (N, 17, 3) | x, y, visibility (0 absent, 1 occluded, 2 visible) |
# | `meta` | dict | `id`, `dataset`, and dataset-specific extras |
#
# A person's part map is derived, never stored: `semantic * (instances == k)`. Here is one SynthCrowd image from the
# fixed validation split, and its fields:

# %%
val = SynthCrowd(split="val", num_images=8, image_size=SIZE, seed=0)
sample = val[0]
fig = show_sample(sample, labels, title=sample["meta"]["id"])
for key, value in sample.items():
    if isinstance(value, torch.Tensor):
        print(f"{key:10s} {str(value.dtype):14s} {tuple(value.shape)}")
meta = sample["meta"]
print("meta keys:", ", ".join(meta))
print("per person:", {k: meta[k] for k in ("pose", "view", "scale", "visible_fraction")})

# %% [markdown]
# ## Labels and keypoints
#
# SynthCrowd uses the CIHP label set (19 parts and background) so that every method trained on it is, label for
# label, a CIHP model. Three pairs of labels are left/right pairs, which a horizontal flip swaps. The keypoints are
# COCO's 17, whose left/right pairs swap too.

# %%
rows = "\n".join(f"| {i} | <span style='background:rgb{tuple(int(c) for c in labels.palette[i])};"
                 f"padding:0 1.2em'></span> | {name} |" for i, name in enumerate(labels.names))
flips = ", ".join(f"{labels.names[a]} ↔ {labels.names[b]}" for a, b in labels.flip_pairs)
display(Markdown(f"| value | colour | CIHP part |\n|---|---|---|\n{rows}\n\nFlip pairs: {flips}.\n\n"
                 f"Keypoints (COCO-17): {', '.join(KEYPOINT_NAMES)}."))

# %% [markdown]
# ## Step 1: a skeleton in a pose, seen from a view
#
# A person is a skeleton in its own body frame $(l, u, f)$: the person's **left**, **up** and **forward**, in units
# of standing height (about 7.5 heads; shoulders 0.23 wide, arms 0.17 + 0.15 + a hand). A pose is a set of joint
# angles: for each shoulder and hip an *abduction* $a$ (away from the body, sideways) and a *flexion* $b$ (forwards),
# for elbows and knees a flexion. A limb then points along
#
# $$d(a, b) = (\pm \sin a \cos b,\; -\cos a \cos b,\; \sin b),$$
#
# with $+$ for the left side. Four poses draw their angles from ranges inside fixed joint limits:

# %%
display(Markdown("| joint angle | range (degrees) |\n|---|---|\n" + "\n".join(
    f"| {name.replace('_', ' ')} | {lo:.0f} … {hi:.0f} |" for name, (lo, hi) in JOINT_LIMITS.items())))

# %% [markdown]
# ```{literalinclude} ../hparse/data/synth_render.py
# :pyobject: _limb_dir
# ```
#
# The person is then turned by a yaw $\theta$ about the vertical axis and projected orthographically:
# image $x = x_0 + h\,(l\cos\theta + f\sin\theta)$, image $y = y_0 - h\,u$, and depth towards the camera
# $z = -l\sin\theta + f\cos\theta$, where $h$ is the person's height in pixels and $(x_0, y_0)$ their place on the
# ground. $\theta = 0$ faces the camera (*front*), $\theta = \pi$ shows the back, $\pm\pi/2$ a side view; each view
# gets ±22° of jitter.
#
# ```{literalinclude} ../hparse/data/synth_render.py
# :pyobject: _project
# ```
#
# The view changes what is drawn, not only where: a face or only hair, which arm passes in front of the torso, which
# eye and ear are hidden. The gallery shows the four poses from the three views (one random person each), with the
# amodal skeleton (every keypoint, hidden or not) on top.

# %%
GALLERY = 96 if profile.name == "smoke" else 128
fig, axes = plt.subplots(len(VIEWS), len(POSES), figsize=(1.9 * len(POSES), 1.9 * len(VIEWS)))
for r, view in enumerate(VIEWS):
    for c, pose in enumerate(POSES):
        scene = solo_scene(pose=pose, view=view, size=GALLERY, seed=3 * r + c)
        raster = rasterize(scene)
        ax = axes[r, c]
        ax.imshow(to_numpy_image(rgb(scene, raster)))
        skeleton = raster.keypoints[:, :, :3].copy()
        skeleton[..., 2] = 2  # draw every joint: the skeleton before occlusion
        draw_keypoints(ax, skeleton, labels.keypoints, markersize=2)
        ax.set_xticks([])
        ax.set_yticks([])
        if c == 0:
            ax.set_ylabel(view)
        if r == 0:
            ax.set_title(pose.replace("_", " "), fontsize=9)
fig.tight_layout()

# %% [markdown]
# ## Step 2: parts are shapes
#
# Real part masks are not boxes: limbs taper, heads are round, skirts flare. SynthCrowd draws each part as a
# polygon: **tapered capsules** for arms, legs, sleeves and trouser legs, **ellipses** for heads, hair and hands,
# flattened capsules (trapezoids) for torsos, and **flared hulls** for skirts, dresses and coat tails. One function
# makes almost all of them; its `round` arguments flatten the end caps:
#
# ```{literalinclude} ../hparse/data/synth_render.py
# :pyobject: capsule
# ```
#
# Each primitive carries a depth key (the mean depth of the joints it spans, plus small biases: arms slightly in
# front of the torso, legs slightly behind, the skirt over the thighs). Drawing a person's primitives in key order,
# back to front, resolves self-occlusion: the painter's algorithm. Below, the primitives of one walking person seen
# from the side in drawing order, then the label map they produce.

# %%
scene = solo_scene(pose="walking", view="side", size=128, seed=4)
prims, _ = person_primitives(scene.people[0])
steps = [len(prims) // 4, len(prims) // 2, 3 * len(prims) // 4, len(prims)]
fig, axes = plt.subplots(1, len(steps) + 1, figsize=(2.3 * (len(steps) + 1), 2.5))
for ax, upto in zip(axes, steps):
    for prim in prims[:upto]:
        colour = labels.palette[prim.label] / 255 if prim.label else (0.6, 0.6, 0.6)
        ax.fill(prim.polygon[:, 0], prim.polygon[:, 1], facecolor=colour, edgecolor="k", linewidth=0.4)
    ax.set_xlim(0, 128)
    ax.set_ylim(128, 0)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"first {upto} of {len(prims)} shapes", fontsize=8)
raster = rasterize(scene)
axes[-1].imshow(labels.colorize(decode(raster.code)[2]))
axes[-1].axis("off")
axes[-1].set_title("label map", fontsize=8)
fig.tight_layout()
used = sorted({labels.names[p.label] for p in prims if p.label})
print(f"{len(prims)} primitives, parts: {', '.join(used)}")

# %% [markdown]
# Outfits are sampled per person: a T-shirt, long sleeves, a tank top, a coat (sometimes open over a shirt) or a
# dress; trousers, shorts or a skirt; short, long or no hair; and sometimes a hat, sunglasses, a scarf, gloves or
# socks. A neckline or a cropped top shows `Torso-skin`. Over a large sample all 19 CIHP parts occur (measured in the
# statistics below).
#
# Two labelling choices are written down in the code: the neck is `Torso-skin`, and hands belong to `Left-arm` /
# `Right-arm` (or `Glove`), as in CIHP.

# %% [markdown]
# ## Left and right are the person's own
#
# Because the person's left axis $l$ maps to $+x$ when they face the camera, **a front-facing person's `Left-arm`
# lies on the image's right**, and on the image's left when they are seen from the back. This is CIHP's convention,
# and it is why a horizontal flip must swap left and right labels (and keypoints): the mirror image of a
# front-facing person is still a front-facing person, whose arm on the image's right is, again, their left.
# `hflip_sample` does exactly that.

# %%
def left_right(ax, s, title):
    semantic = s["semantic"].clone()
    keep = (semantic == labels.index("Left-arm")) | (semantic == labels.index("Right-arm"))
    semantic[~keep] = 0
    ax.imshow(overlay_semantic(s["image"], semantic, labels, alpha=0.9))
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def solo_sample(view, seed):
    """One-person scene as a data-contract-like dict (enough for drawing and flipping)."""
    scene = solo_scene(pose="arms_raised", view=view, size=128, seed=seed)
    raster = rasterize(scene)
    _, _, label = decode(raster.code)
    kps = raster.keypoints[:, :, :3].copy()
    kps[..., 2] = 2
    return {"image": rgb(scene, raster),
            "semantic": torch.from_numpy(label.astype(np.int64)),
            "instances": torch.from_numpy((label > 0).astype(np.int64)),
            "boxes": torch.zeros(1, 4), "keypoints": torch.from_numpy(kps), "meta": {"id": view}}


front, back = solo_sample("front", 1), solo_sample("back", 1)
fig, axes = plt.subplots(1, 3, figsize=(7, 2.6))
left_right(axes[0], front, "front: Left-arm (light blue) on the right")
left_right(axes[1], back, "back: Left-arm on the left")
left_right(axes[2], hflip_sample(front, labels), "front, flipped: labels swapped")
fig.tight_layout()

# %% [markdown]
# ## Step 3: clothing, textures, clutter and noise
#
# The renderer never paints an image directly. It draws integer *codes* into one buffer,
# `code = slot·1024 + segment·32 + label` (slot 0 is the background and its clutter; people are slots 1..P; the
# segment says which body piece drew the pixel), and the image is computed from the codes afterwards, for all
# pixels at once:
#
# 1. **flat colours**: every garment, every clutter object and the background has two colours; skin tones, hair
#    colours and clothing colours are drawn per person;
# 2. **patterns**: stripes $[\sin u > 0]$, checks $[\sin u \sin v > 0]$ (with $(u, v)$ the pixel's rotated, scaled
#    coordinates) or mottled noise mix the two colours; the background blends a wall into a floor at a horizon;
# 3. **lighting**: a gain, a gradient across the image, slow brightness variation, and darkening near region
#    boundaries so that parts look rounded and occlusion boundaries show;
# 4. **camera**: a [1, 2, 1] blur in half of the images, Gaussian sensor noise, 8-bit quantisation.
#
# Background clutter (ellipses, sticks, boxes, blobs) is painted from the *same* colour distributions as skin, hair
# and clothes, and a quarter of the images have a foreground object (a post, a box) that occludes people without
# being one. Sitting people sit on a stool, which is background too.

# %%
stages = val.stages(1)
names = ("flat", "textured", "lit", "final")
fig, axes = plt.subplots(1, 5, figsize=(12, 2.6))
for ax, name in zip(axes, names):
    ax.imshow(stages[name])
    ax.set_title(name, fontsize=9)
    ax.axis("off")
axes[-1].imshow(labels.colorize(decode(stages["raster"].code)[2]))
axes[-1].set_title("labels", fontsize=9)
axes[-1].axis("off")
fig.tight_layout()

# %% [markdown]
# ## Step 4: occlusion, the z-buffer, truncation
#
# People are placed at a depth $d \in [0, 1]$: the standing height grows geometrically from 0.2 to 0.95 of the
# image side (a 4.75× range) and the feet move down the image as $d$ grows, so near people are larger, lower, and
# the nearest are cut by the bottom edge; positions range a little beyond the left and right edges, so people are
# cut there too. People are drawn **far to near into the same code buffer**, so the buffer ends as a z-buffer: each
# pixel holds the nearest thing, and the ground truth of an occluded person is exactly their visible pixels. Person
# ids follow depth (id 1 is the farthest). Just after a person is drawn, before anyone nearer, all their pixels
# still hold their slot: counting them gives the person's full (*amodal*) area, inside and outside the image, on a
# canvas padded beyond the image. From those counts come each person's `visible_fraction` (visible / amodal inside
# the image) and `truncated_fraction` (the share outside the image).

# %%
crowd = SynthCrowd(split="val", num_images=40, image_size=SIZE, min_people=4, max_people=5, crowding=0.9, seed=0)
index = next(i for i in range(len(crowd)) if len(crowd[i]["boxes"]) >= 3)
scene = crowd.scene(index)
count = len(scene.people)
fig, axes = plt.subplots(1, count + 1, figsize=(2.2 * (count + 1), 2.4))
for k in range(count):
    partial = rasterize(scene, people=list(range(k + 1)))
    axes[k].imshow(overlay_instances(rgb(scene, partial), decode(partial.code)[0], alpha=0.6))
    axes[k].set_title(f"draw person {k + 1} (d={scene.people[k].depth:.2f})", fontsize=7)
    axes[k].axis("off")
s = crowd[index]
axes[-1].imshow(to_numpy_image(s["image"]))
draw_boxes(axes[-1], s["boxes"])
draw_keypoints(axes[-1], s["keypoints"], labels.keypoints)
axes[-1].set_title("sample: visible boxes, keypoints", fontsize=7)
axes[-1].axis("off")
fig.tight_layout()
print("visible fraction per person:", s["meta"]["visible_fraction"])
print("truncated fraction per person:", s["meta"]["truncated_fraction"])
print("dropped (fully hidden):", s["meta"]["dropped"])

# %% [markdown]
# Three rules keep the contract honest under occlusion:
#
# - **Boxes are visible-extent boxes**: the tight box of a person's visible pixels, as boxes derived from CIHP masks
#   are. The box of the whole, unoccluded person is kept in `meta["amodal_boxes"]`.
# - **A person with no visible pixel** (fully hidden, or standing outside the image) is **dropped**, the others are
#   renumbered 1..N, and `meta["dropped"]` records who was dropped and why. No sample ever has an empty instance.
# - **Keypoint visibility is read off the z-buffer**: a keypoint is visible (2) only where the pixel under it shows
#   its own person *and* a body segment next to that joint; otherwise it is occluded (1): by someone else, by a
#   foreground object, or by the person's own body (a wrist behind the torso, a knee under a skirt, a nose seen
#   from behind). Keypoints outside the image are absent (0). Filled dots above are visible keypoints, hollow dots
#   occluded ones.
#
# ```{literalinclude} ../hparse/data/synth.py
# :pyobject: SynthCrowd._keypoints
# ```

# %% [markdown]
# ## Samples
#
# The fixed validation split at this profile's image size, drawn three ways: the image with boxes and keypoints,
# the part labels, and the persons.

# %%
samples = [val[i] for i in range(len(val))]
for panel in ("image", "parts", "persons"):
    fig = sample_grid(samples, labels, cols=8, panel=panel, size=1.6)

# %% [markdown]
# ## Statistics
#
# What a model trained on SynthCrowd sees, measured on the first images of the training split at this profile's
# size (`synth_statistics` counts people, visible fractions, part pixels and keypoint visibility):

# %%
train = SynthCrowd(split="train", num_images=STATS_IMAGES, image_size=SIZE, seed=0)
stats = synth_statistics(train)
display(Markdown(
    f"| images | people / image | dropped (fully hidden) | mean visible fraction | occlusion ratio | "
    f"scale range | keypoints absent / occluded / visible |\n|---|---|---|---|---|---|---|\n"
    f"| {stats['images']} | {np.mean(stats['people_per_image']):.2f} | {stats['dropped']} | "
    f"{stats['mean_visible_fraction']:.3f} | {stats['occlusion_ratio']:.3f} | {stats['scale_range']:.1f}× | "
    + " / ".join(f"{v:.2f}" for v in stats["keypoint_visibility"]) + " |"))

fig, axes = plt.subplots(1, 4, figsize=(13, 2.8))
people = np.array(stats["people_per_image"])
axes[0].hist(people, bins=np.arange(people.max() + 2) - 0.5, color="tab:blue", rwidth=0.85)
axes[0].set_xlabel("people per image (kept)")
axes[1].hist(stats["visible_fraction"], bins=20, range=(0, 1), color="tab:orange")
axes[1].set_xlabel("visible fraction per person")
axes[2].hist(stats["scale"], bins=20, color="tab:green")
axes[2].set_xlabel("person height (px)")
poses_views = {**{p: stats["poses"][p] for p in POSES}, **{v: stats["views"][v] for v in VIEWS}}
axes[3].bar(range(len(poses_views)), list(poses_views.values()),
            color=["tab:purple"] * len(POSES) + ["tab:gray"] * len(VIEWS))
axes[3].set_xticks(range(len(poses_views)))
axes[3].set_xticklabels([n.replace("_", " ") for n in poses_views], rotation=45, ha="right", fontsize=8)
axes[3].set_xlabel("poses and views (people)")
fig.tight_layout()

# %% [markdown]
# Part frequencies: the share of person pixels of each CIHP part, and the share of people that show it at all. Rare
# parts (gloves, sunglasses, socks, hats, scarves) are rare here too, as they are in CIHP, which is what makes
# per-part metrics of small classes noisy.

# %%
parts = labels.names[1:]
fig, axes = plt.subplots(1, 2, figsize=(13, 3.2))
for ax, key, title in ((axes[0], "part_pixels", "share of person pixels"),
                       (axes[1], "part_presence", "share of people showing the part")):
    ax.bar(range(len(parts)), [stats[key][p] for p in parts], color=labels.palette[1:] / 255, edgecolor="k",
           linewidth=0.3)
    ax.set_xticks(range(len(parts)))
    ax.set_xticklabels(parts, rotation=60, ha="right", fontsize=8)
    ax.set_title(title, fontsize=9)
fig.tight_layout()

# %% [markdown]
# ## The crowding sweep
#
# `crowding` ∈ [0, 1] decides where people stand. Each person's depth (hence size) is drawn first; then 16
# candidate horizontal positions, and the one chosen is the one whose overlap with the people already placed (the
# share of the person's box covered by earlier boxes) is closest to $0.9 \cdot$ `crowding`: at 0 the emptiest spot,
# at 1 the most crowded. Nothing that is drawn depends on `crowding`, so a sweep moves **the same people** (same
# poses, outfits, sizes, counts) sideways, from apart to piled up, and an evaluation set can be swept from sparse to
# crowded with everything else fixed.

# %%
LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
fig, axes = plt.subplots(2, len(LEVELS), figsize=(2.3 * len(LEVELS), 4.6))
for c, level in enumerate(LEVELS):
    s = SynthCrowd(split="val", num_images=4, image_size=SIZE, min_people=4, max_people=5, crowding=level)[2]
    axes[0, c].imshow(to_numpy_image(s["image"]))
    axes[0, c].set_title(f"crowding {level}", fontsize=9)
    axes[1, c].imshow(overlay_instances(s["image"], s["instances"], alpha=0.85))
    axes[1, c].set_title(f"{len(s['boxes'])} visible people", fontsize=8)
for ax in axes.flat:
    ax.axis("off")
fig.tight_layout()

# %%
curve = []
for level in np.linspace(0, 1, 6):
    sweep = SynthCrowd(split="val", num_images=SWEEP_IMAGES, image_size=SIZE, min_people=3, max_people=5,
                       crowding=float(level))
    st = synth_statistics(sweep)
    curve.append((level, st["mean_visible_fraction"], st["dropped"] / max(sum(st["rendered_per_image"]), 1)))
curve = np.array(curve)
fig, ax = plt.subplots(figsize=(4.6, 2.8))
ax.plot(curve[:, 0], curve[:, 1], "o-", label="mean visible fraction")
ax.plot(curve[:, 0], curve[:, 2], "s--", label="share of people fully hidden")
ax.set_xlabel("crowding")
ax.set_ylim(0, 1)
ax.legend(fontsize=8)
ax.set_title(f"{SWEEP_IMAGES} val images per level, 3-5 people", fontsize=9)
fig.tight_layout()

# %% [markdown]
# ## Explore
#
# With a live kernel, the slider steps through the validation split at a crowding of 0.7 (image, boxes and
# keypoints on the left, persons on the right). The static strip below it shows the first images for the rendered
# page, where widgets do not run.

# %%
explore = SynthCrowd(split="val", num_images=12 if profile.name == "smoke" else 100, image_size=SIZE,
                     crowding=0.7)


def render(index, ax):
    s = explore[index]
    both = np.concatenate([to_numpy_image(s["image"]), overlay_instances(s["image"], s["instances"], 0.8)], axis=1)
    ax.imshow(both)
    draw_boxes(ax, s["boxes"])
    draw_keypoints(ax, s["keypoints"], labels.keypoints, markersize=2)
    ax.set_title(f"{s['meta']['id']}: {len(s['boxes'])} people", fontsize=8)
    ax.axis("off")


slider_explorer(render, len(explore), description="image", figsize=(6, 3.2))

# %%
fig = static_strip(render, [0, 1, 2], size=3.2)

# %% [markdown]
# ## Fixed splits, determinism and speed
#
# Image $i$ depends only on `(split, seed, i)`: not on `num_images`, not on the order of access, not on the other
# images. Each split draws from its own random stream, so the benchmarks and the book always use the same images:
#
# - `val  = SynthCrowd(split="val",  num_images=500, image_size=256, seed=0)`
# - `test = SynthCrowd(split="test", num_images=500, image_size=256, seed=0)`
#
# and the first 100 images of the 500-image split *are* the 100-image split. Within an image, the people, their
# placement and the photometry use three separate streams, which is what keeps the people fixed in a crowding sweep.

# %%
a = SynthCrowd(split="val", num_images=500, image_size=64)[7]
b = SynthCrowd(split="val", num_images=10, image_size=64)[7]
print("same image from a 500- and a 10-image split:", torch.equal(a["image"], b["image"]), a["meta"]["id"])
print("split streams:", SPLITS)

# %% [markdown]
# Rendering is fast enough to generate training data on the fly: polygons are filled by PIL into one integer
# buffer, and everything per pixel is a NumPy array operation. The benchmark `hparse bench synth` times full
# `dataset[i]` calls on one thread (the numbers below come from its result file):

# %%
record = find_results("bench/synth", profiles=("gpu", "cpu", "smoke"))
if record is None:
    print("no benchmark result yet: run `HPARSE_PROFILE=cpu hparse bench synth`")
else:
    m = record["metrics"]
    display(Markdown(
        f"| images / s at 256² (1 thread) | per CPU-second | images / s at {record['config']['image_size_profile']}² | "
        f"scene / z-buffer / shading / contract (ms) |\n|---|---|---|---|\n"
        f"| {m['images_per_s_256']:.0f} | {m['images_per_cpu_s_256']:.0f} | {m['images_per_s_profile']:.0f} | "
        f"{m['ms_scene']:.2f} / {m['ms_rasterize']:.2f} / {m['ms_shade']:.2f} / {m['ms_contract']:.2f} |\n\n"
        f"Measured on {record['provenance']['device']} (profile `{record['profile']}`, "
        f"{record['provenance']['date']}, load average {m['load_average']:.1f} during the run)."))

# %% [markdown]
# ## Summary
#
# - SynthCrowd renders articulated people (four poses, three views, a 4.75× scale range) with shaped CIHP parts,
#   per-person outfits and textures, cluttered backgrounds in part-like colours, blur and noise.
# - People are drawn far to near into one code buffer: a z-buffer whose visible pixels are the ground truth. Boxes
#   are visible-extent boxes; fully hidden people are dropped and recorded; keypoint visibility comes from the buffer.
# - Left/right are the person's own; `hflip_sample` swaps labels and keypoints accordingly.
# - `crowding` moves the same people from apart to piled up; the visible fraction falls as it rises.
# - Images are deterministic per `(split, seed, index)`; val and test are fixed.
#
# ## Exercises
#
# 1. Using `meta["view"]` and the `semantic` map, measure how often a back-facing person shows any `Face` pixel. Why
#    is it not exactly zero for views near ±90°?
# 2. Sweep `crowding` and plot the fraction of keypoints with visibility 1. Does it follow the visible fraction?
# 3. Make a dataset where every person is `sitting` (hint: `solo_scene` and `sample_person` accept a pose) and look
#    at which keypoints become occluded by the person's own body.
# 4. Train-time augmentation flips images: check with `hflip_sample` that a flipped sample still passes
#    `hparse.data.contract.validate_sample`, and that the per-part pixel counts of `Left-arm` and `Right-arm` swap.
