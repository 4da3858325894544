# ---
# jupyter:
#   jupytext:
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # The Dense-to-Sparse Projection Field: from every pixel to a joint
#
# A bottom-up parser {cite:p}`mgparsing2021` labels every pixel with a part (arm, face, coat) without knowing whose it
# is, finds every joint of every person, and then has to answer one question per pixel: *which person?* The
# multi-granularity parser answers it with a **Dense-to-Sparse Projection Field** (DSPF, §3.2): for each human pixel
# $u$ a vector $D(u)$ such that $u + D(u)$ is the nearest joint of the pixel's own person. Once joints are grouped
# into people (§3.3), a pixel belongs to the person owning the joint it points at (Eq. 17).
#
# This chapter draws the field, its coarse-to-fine estimation over the feature pyramid (Eqs. 2–6), the keypoint
# candidates it produces with Hough voting (Eq. 8), the limb scores that feed the matching of
# [the next chapter](09_dykstra_matching), the pixel assignment of Eq. 17, and the **oracle**: the whole assembly run
# on ground-truth maps, which bounds what any network feeding it can reach. The code is
# `hparse.models.mg_parser` (`build_model("mg_parser", ...)`), `hparse.ops.hough` and `hparse.ops.warp`.

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display
from matplotlib.colors import hsv_to_rgb

from hparse.data import COCO17, SynthCrowd
from hparse.engine import find_results, get_profile, seed_everything
from hparse.models.mg_parser import Assembly, oracle_maps, oracle_prediction
from hparse.models.mg_targets import dspf_targets, scaled_radius
from hparse.ops.hough import hough_map
from hparse.viz.overlay import instance_palette, overlay_instances, to_numpy_image
from hparse.viz.widgets import slider_explorer, static_strip

profile = get_profile()
seed_everything(0)
torch.set_num_threads(min(torch.get_num_threads(), 4))
SIZE = max(profile.image_size, 128)  # the pictures need a few cells per person even in the smoke profile
PEOPLE = min(max(profile.max_people, 3), 5)
data = SynthCrowd("val", num_images=8, image_size=SIZE, min_people=2, max_people=PEOPLE, seed=0)
sample = max((data[i] for i in range(len(data))), key=lambda s: len(s["keypoints"]))
RADIUS, SIGMA = scaled_radius(32.0, SIZE), scaled_radius(9.0, SIZE)
cfg = Assembly(COCO17, 20, RADIUS)
print(f"profile {profile.name}: images of {SIZE} px, R = {RADIUS:.1f} px, sigma = {SIGMA:.1f} px, "
      f"{len(sample['keypoints'])} people in the example")


def faded(image, amount):
    """The image as floats in [0, 1], blended towards white by ``amount`` (a quiet background for overlays)."""
    return to_numpy_image(image) / 255.0 * (1 - amount) + amount


def field_colour(field, mask):
    """(2, H, W) displacement -> (H, W, 3) colour wheel: hue = direction, brightness = length; black off the mask."""
    dx, dy = field[0].numpy(), field[1].numpy()
    angle = (np.arctan2(dy, dx) + np.pi) / (2 * np.pi)
    length = np.hypot(dx, dy)
    value = np.clip(length / max(np.percentile(length[mask], 95), 1e-6), 0, 1) if mask.any() else length
    rgb = hsv_to_rgb(np.stack([angle, np.ones_like(angle), 0.25 + 0.75 * value], -1))
    return rgb * mask[..., None]


# %% [markdown]
# ## The field on a SynthCrowd image
#
# The ground truth is defined once in `hparse.models.mg_targets.dspf_targets`: per pixel of person $k$, the offset
# to the Euclidean-nearest **visible** joint of person $k$ (a pixel of a person with no visible joint is left out of
# the loss). Left: the people; middle: the field as a colour wheel (hue = direction, brightness = length); right: a
# subsample of the vectors as arrows, each ending on a joint. Note the sharp seams where two people touch: a pixel
# on either side points somewhere else entirely, which is what a network has to learn.

# %%
full, weight = dspf_targets(sample["instances"][None], [sample["keypoints"]], stride=1)
field, mask = full[0], weight[0].numpy()
fig, axes = plt.subplots(1, 3, figsize=(11, 3.9))
axes[0].imshow(overlay_instances(sample["image"], sample["instances"]))
axes[0].set_title("people (ground truth)", fontsize=9)
axes[1].imshow(field_colour(field, mask))
axes[1].set_title("DSPF D(u), colour wheel", fontsize=9)
axes[2].imshow(faded(sample["image"], 0.5))
step = max(SIZE // 24, 2)
ys, xs = np.mgrid[step // 2:SIZE:step, step // 2:SIZE:step]
keep = mask[ys, xs]
axes[2].quiver(xs[keep] + 0.5, ys[keep] + 0.5, field[0].numpy()[ys, xs][keep], field[1].numpy()[ys, xs][keep],
               angles="xy", scale_units="xy", scale=1, width=0.004, color="tab:red")
vis = sample["keypoints"][..., 2] >= 2
axes[2].scatter(sample["keypoints"][..., 0][vis], sample["keypoints"][..., 1][vis], s=8, color="black")
axes[2].set_title("vectors end on visible joints", fontsize=9)
for ax in axes:
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# ## Coarse to fine over the pyramid
#
# The network predicts the field at every pyramid level, from stride 32 (large receptive field, robust long-range
# guesses) to stride 4. Below: what each level is asked to predict (the same target sampled at each level's cell
# centres). The coarse levels see a person as a handful of cells, all pointing roughly at the torso; the fine level
# resolves which limb a pixel is on.

# %%
fig, axes = plt.subplots(1, 4, figsize=(11, 3.0))
for ax, stride in zip(axes, (32, 16, 8, 4)):
    level, level_mask = dspf_targets(sample["instances"][None], [sample["keypoints"]], stride=stride)
    ax.imshow(field_colour(level[0], level_mask[0].numpy()), interpolation="nearest")
    ax.set_title(f"stride {stride}: {level.shape[-1]}×{level.shape[-2]} cells", fontsize=9)
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# Four ways to climb this pyramid are flags of the model (`dspf=` and `warp=`), the four rows of the paper's
# Table 4:
#
# - `dspf="single"`: one prediction at stride 4 from the parsing decoder's features (the paper's baseline, which
#   "directly regresses DSPF over multi-layer features").
# - `dspf="incremental"` (Eq. 2): each level predicts the whole field, $D_l = F(X_l, X_{l+1}^\uparrow,
#   2D_{l+1}^\uparrow)$. The factor 2 converts a field in cells of level $l+1$ into cells of level $l$.
# - `dspf="residual"` (Eq. 3, the paper's): each level predicts only a correction,
#   $D_l = F(X_l, X_{l+1}^\uparrow) + 2D_{l+1}^\uparrow$, whose range is similar at every level.
# - `warp=True` (Eqs. 4–6): a 3×3 convolution on both levels predicts a **feature flow** $F_l$ and the coarse feature
#   and field are read at $u + F_l(u)$ instead of $u$, undoing the misalignment that striding and padding leave
#   between levels. With a zero flow this is exactly bilinear upsampling (the flow layer starts at zero; a test
#   checks the equality). Conventions: pixel centres and `align_corners=False` everywhere, flows in cells of the finer
#   level; the released code mixes `linspace(-1, 1)` grids with `align_corners=False` and divides pixel flows by
#   $W$ instead of $W/2$ (see `hparse.ops.warp`).

# %% [markdown]
# ```{literalinclude} ../hparse/models/heads/mg_heads.py
# :pyobject: DSPFPyramid.forward
# ```

# %% tags=["hide-input"]
PAPER_TABLE4 = [("single (baseline)", dict(dspf="single", warp=False), 35.5, 40.8, 39.3),
                ("+ coarse-to-fine (Eq. 2)", dict(dspf="incremental", warp=False), 36.9, 42.4, 40.3),
                ("+ residual refinement (Eq. 3)", dict(dspf="residual", warp=False), 38.1, 43.4, 41.5),
                ("+ learnable warping (Eqs. 4–6)", dict(dspf="residual", warp=True), 38.9, 44.3, 42.2)]
from hparse.experiments.dspf_ablation import record_name
from hparse.experiments.runner import spread_verdict

rows = ["| variant | flags | paper AP^p_50 | paper AP^p_vol | paper PCP_50 | ours AP^p_50 | ours AP^p_vol | "
        "AP^p_vol against the row above |", "|---|---|---|---|---|---|---|---|"]
previous = None
for name, flags, ap50, apvol, pcp in PAPER_TABLE4:
    record = find_results(record_name(flags["dspf"], flags["warp"]))
    m = record["metrics"] if record and "mean" in record["metrics"] else None
    ours = [f"{100 * m['mean'][k]:.1f} ± {100 * m['std'][k]:.1f}" for k in ("APp50", "APpvol")] if m else \
        ["not run yet"] * 2
    verdict = ""
    if m and previous:
        verdict = spread_verdict(m, previous, "APpvol")
    previous = m
    rows.append(f"| {name} | `{', '.join(f'{k}={v!r}' for k, v in flags.items())}` | {ap50} | {apvol} | {pcp} | "
                f"{' | '.join(ours)} | {verdict} |")
display(Markdown("\n".join(rows) + "\n\nPaper: Table 4, MHP v2 val, ResNet-101, percent. Ours: SynthCrowd val, mean ± "
                 "spread over seeds, percent; the last column compares AP^p_vol with the row above. Reproduce: "
                 "`python -m hparse.experiments.dspf_ablation --profile cpu` (one record per row, "
                 "`results/cpu/mg_parser/dspf_<dspf>_<warp|bilinear>.json`)."))

# %% [markdown]
# ## Keypoints: disks, offsets and Hough voting
#
# Per keypoint type the pose branch predicts a disk heatmap $M$ (1 within $R$ of a joint of that type; the paper's
# $R = 32$ px at its scale, here $R = 32 \cdot \text{side}/512$) and short-range offsets $O$ pointing at the joint.
# Every cell votes for $u + O(u)$ with weight $M(u)$; the Hough score (Eq. 8) sums the votes with a bilinear kernel.
# The candidates are then read **at the DSPF projections** $u + D(u)$ of the human pixels: a projection that scores at
# least 0.7 (the paper's threshold) is a joint; nearby duplicates are suppressed. Eq. 8 divides by $\pi R^2$, so a
# joint whose disk the image border cuts scores below the threshold; hparse divides by the disk's cells inside the
# image instead (`hough_norm="cells"`, the oracle table below has both). The explorer steps through the 17 types on
# the ground-truth maps.

# %%
maps = oracle_maps(sample, COCO17, cfg.limbs, 20, RADIUS, SIGMA)
h, w = maps["human"].shape
centres = (torch.stack(torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")[::-1], -1) * 4)
votes = (centres[None] + maps["offsets"].permute(0, 2, 3, 1)).reshape(17, -1, 2) / 4
hough = hough_map(votes, maps["disks"].reshape(17, -1), (h, w), radius=RADIUS / 4)
steps = oracle_prediction(sample, return_steps=True)["steps"]


def draw_type(k, ax):
    ax.imshow(faded(sample["image"], 0.6))
    heat = np.ma.masked_less(hough[k].numpy(), 0.02)  # only where votes landed
    ax.imshow(heat, extent=(0, SIZE, SIZE, 0), cmap="magma_r", vmin=0, vmax=1, interpolation="nearest")
    ax.contour(np.kron(maps["disks"][k].numpy(), np.ones((4, 4))), levels=[0.5], colors="tab:cyan", linewidths=0.8)
    if "candidates" in steps:
        cand, ok = steps["candidates"][k], steps["candidate_valid"][k]
        ax.scatter(cand[ok, 0], cand[ok, 1], marker="x", color="lime", s=30)
    ax.set_title(f"{COCO17.names[k]}: disks, Hough map, candidates", fontsize=8)
    ax.axis("off")


display(slider_explorer(draw_type, 17, description="type", figsize=(4.5, 4.5)))
_ = static_strip(draw_type, [0, 5, 9, 15], size=2.8)

# %% [markdown]
# ## Limbs and their scores
#
# One heatmap per limb type: a Gaussian of the distance to the limb segment (σ = 9 px at the paper's scale). The score
# of a candidate pair is the mean heatmap on 10 points of the segment between them; per limb type this gives the
# matrix $A$ of Eq. 9, which the matching of the next chapter solves. hparse scores the skeleton's 19 limbs and the
# pairs two limbs apart (shoulder–wrist, hip–ankle, ...; `limbs="dense"`), so that a missed elbow does not cut a wrist
# off its person; the oracle table shows what that is worth.

# %%
limb = cfg.limbs.index((7, 9)) if (7, 9) in cfg.limbs else 10
fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.8))
axes[0].imshow(faded(sample["image"], 0.6))
axes[0].imshow(np.ma.masked_less(maps["limbs"][limb].numpy(), 0.05), extent=(0, SIZE, SIZE, 0), cmap="viridis",
               vmin=0, vmax=1)
a, b = cfg.limbs[limb]
axes[0].set_title(f"limb heatmap {COCO17.names[a]} – {COCO17.names[b]}", fontsize=9)
axes[0].axis("off")
if "limb_scores" in steps:
    A = steps["limb_scores"][limb]
    va, vb = steps["candidate_valid"][a], steps["candidate_valid"][b]
    axes[1].imshow(A[va][:, vb].numpy(), vmin=0, vmax=1, cmap="viridis")
    axes[1].set_xticks(range(int(vb.sum())))
    axes[1].set_yticks(range(int(va.sum())))
    axes[1].set_xlabel(f"{COCO17.names[b]} candidates")
    axes[1].set_ylabel(f"{COCO17.names[a]} candidates")
    axes[1].set_title("A (Eq. 9): one bright entry per person", fontsize=9)
fig.tight_layout()

# %% [markdown]
# ## Pixels to people (Eq. 17)
#
# After grouping, pixel $u$ goes to $\arg\min_h \min_{p \in P_h} \lVert u + D(u) - p\rVert / ((s_p + s_h)\sigma_h)$:
# the person owning the joint its projection lands nearest to, with distances shrunk for confident joints and people
# and scaled by the person's size. Left: ground truth; right: the oracle's assignment. Where they differ, a person
# lost joints (none visible, or a candidate below threshold) and its pixels went to a neighbour.

# %%
pred = oracle_prediction(sample)
owner = torch.zeros_like(sample["instances"])
for index, parts in enumerate(pred["person_parts"]):
    owner[parts > 0] = index + 1
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
axes[0].imshow(overlay_instances(sample["image"], sample["instances"]))
axes[0].set_title(f"ground truth: {len(sample['keypoints'])} people", fontsize=9)
axes[1].imshow(overlay_instances(sample["image"], owner))
axes[1].set_title(f"oracle (Eq. 17): {len(pred['person_scores'])} people", fontsize=9)
for ax in axes:
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# ## The oracle bound
#
# `oracle_prediction(sample)` is the parser's own assembly on ground-truth maps. It is the proof that the grouping is
# right, and the ceiling for any network: a trained model can only lose from here. The table reads the committed
# measurement on 100 SynthCrowd val images (192 px, up to 5 people), one setting changed per row; in a profile without
# that file it measures the first images of the val split instead.

# %% tags=["hide-input"]
record = find_results("mg_parser/oracle", ("cpu", "gpu"))
if record is not None:
    variants = record["metrics"]["variants"]
    source = (f"`results/{record['profile']}/mg_parser/oracle.json` ({record['config']['images']} images); "
              "reproduce with `hparse bench mg_parser_oracle --profile cpu`")
else:
    from hparse.benchmarks.mg_parser import ORACLE_VARIANTS
    from hparse.metrics import ParsingEvaluator

    variants = {}
    small = SynthCrowd("val", num_images=profile.val_images, image_size=SIZE, max_people=PEOPLE)
    for name in ("default", "skeleton_limbs", "hough_norm_area"):
        evaluator = ParsingEvaluator(20)
        for i in range(len(small)):
            evaluator.update(oracle_prediction(small[i], **ORACLE_VARIANTS[name]), small[i])
        variants[name] = evaluator.compute()
    source = f"measured here on {profile.val_images} images (no committed record)"
rows = ["| setting | AP^p_50 | AP^p_vol | PCP_50 | AP^r_50 |", "|---|---|---|---|---|"]
for name, m in variants.items():
    rows.append(f"| {name} | {100 * m['APp50']:.1f} | {100 * m['APpvol']:.1f} | {100 * m['PCP50']:.1f} | "
                f"{100 * m['APr50']:.1f} |")
display(Markdown("\n".join(rows) + f"\n\nPercent. Source: {source}."))

# %% [markdown]
# ## Where the oracle fails: crowds
#
# In a crowded image (`crowding=1`, more people) people hide each other's joints. A person with no visible joint
# cannot be found at all; its pixels point at its hidden joints, and Eq. 17 hands them to whoever has a joint nearby.
# Red outlines mark ground-truth people the oracle does not recover with part IoU ≥ 0.5.

# %%
crowd = SynthCrowd("val", num_images=1, image_size=SIZE, min_people=6, max_people=8, crowding=1.0, seed=3)[0]
pred = oracle_prediction(crowd)
owner = torch.zeros_like(crowd["instances"])
for index, parts in enumerate(pred["person_parts"]):
    owner[parts > 0] = index + 1
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
axes[0].imshow(overlay_instances(crowd["image"], crowd["instances"]))
axes[1].imshow(overlay_instances(crowd["image"], owner))
missed = 0
for k in range(len(crowd["keypoints"])):
    gt = crowd["instances"] == k + 1
    ious = [float((gt & (p > 0)).sum() / (gt | (p > 0)).sum()) for p in pred["person_parts"]]
    if max(ious, default=0.0) < 0.5:
        missed += 1
        axes[0].contour(gt.numpy(), levels=[0.5], colors="red", linewidths=1.2)
axes[0].set_title(f"ground truth: {len(crowd['keypoints'])} people, {missed} missed (red)", fontsize=9)
axes[1].set_title(f"oracle: {len(pred['person_scores'])} people", fontsize=9)
for ax in axes:
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# ## Runtime against the number of people
#
# The paper's Fig. 5: a bottom-up parser's time does not grow with the crowd, a top-down parser's does.
# `hparse bench mg_parser` times both on the same SynthCrowd images with 1–16 people (Parsing R-CNN parses exactly
# $n$ detections; the bottom-up network runs once and its assembly groups the $n$ real people of the image).
#
# Read the two bottom-up curves apart. The network is fully convolutional: its time is the same for one person or
# sixteen. The assembly is not free: Eq. 17 compares every human pixel with every joint of every person, and Hough
# voting scores every projection against every vote, so on a CPU its time grows with the crowd, though more slowly
# than a top-down parser's, which runs its parsing branch once per person. On a GPU these are a few large tensor
# operations and the paper's flat curve is the network's.

# %% tags=["hide-input"]
bench = find_results("bench/mg_parser", ("gpu", "cpu"))
if bench is None:
    print("no committed runtime record; run `hparse bench mg_parser --profile cpu`")
else:
    m = bench["metrics"]
    people = m["people"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(people, [m["parsing_rcnn_ms"][str(n)] for n in people], "o-", label="Parsing R-CNN (top-down)")
    ax.plot(people, [m["mg_total_ms"][str(n)] for n in people], "s-", label="mg_parser (bottom-up), total")
    ax.plot(people, [m["mg_assembly_ms"][str(n)] for n in people], "s--", label="mg_parser, assembly only")
    ax.set_xlabel("people in the image")
    ax.set_ylabel("latency per image (ms)")
    ax.set_title(f"{bench['profile']} profile, {bench['provenance'].get('device', '')}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    print(f"per extra person: Parsing R-CNN {m['parsing_rcnn_ms_per_extra_person']:.1f} ms, "
          f"mg_parser {m['mg_total_ms_per_extra_person']:.1f} ms (assembly {m['mg_assembly_ms_per_extra_person']:.1f})")
