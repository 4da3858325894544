# ---
# jupyter:
#   jupytext:
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # RoI attention: parsing one person per box
#
# A top-down parser detects people first and then parses each detected box as a *single*-person problem. Qin et al.
# {cite:p}`roiattention2019` build such a framework on Faster R-CNN with a feature pyramid {cite:p}`fpn2017`, in the
# Mask R-CNN family {cite:p}`maskrcnn2017`. A box around a person in a crowd is rarely that person alone, though.
# Neighbours reach into it, and the parsing branch sees their arms and legs as well as the target's. The paper's
# answer is an **attention branch**: a small head that predicts the foreground of the box's own person and hands this
# map to the parsing branch, so that "the noisy part caused by other instances or the background within a proposal
# region can be mitigated" (Sec. 3.1).
#
# The model has three branches on one ResNet-FPN (Fig. 2 of the paper):
#
# 1. **Detection**: RPN and box head; RoIAlign 14×14 and four 3×3 convolutions (Sec. 3.2).
# 2. **Attention**: RoIAlign 14×14, four 3×3 convolutions, ×2 upsampling to a 28×28 foreground map, trained with
#    binary cross-entropy against the person's mask.
# 3. **Parsing**: RoIAlign 28×28 on *every* pyramid level, fused by an element-wise max, four 3×3 convolutions with
#    group normalisation, the attention map fused in, ×2 upsampling to 56×56 part logits, per-pixel cross-entropy.
#
# All three are trained together with the multi-task loss of Eq. 1,
#
# $$
# L = L_d + L_a + \alpha L_p, \qquad \alpha = 5,
# $$
#
# where $L_d$ is the detector's loss (RPN and box classification and regression), $L_a$ the attention branch's binary
# cross-entropy, and $L_p$ the parsing cross-entropy, computed "only on positive proposals". The paper tests four
# ways of feeding the attention map into the parsing branch (Table 5). This chapter builds all of them
# (`hparse.models.build_model("attention_rcnn", attention=...)`), looks at what the attention branch is asked to
# predict inside overlapping boxes, and runs the ablation on SynthCrowd, including how it behaves as crowds get
# denser. We compare with Parsing R-CNN {cite:p}`parsingrcnn2019`, the other top-down method of this book, along
# the way.

# %%
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display
from torchvision.ops import roi_align

import hparse
from hparse.data import SynthCrowd
from hparse.engine import get_profile, seed_everything
from hparse.engine.results import device_name
from hparse.experiments.attention_ablation import (
    CROWDINGS,
    VARIANTS,
    ablation,
    crowding_sweep,
    other_person_fraction,
    roi_noise_sweep,
    saved_ablation,
    saved_sweep,
    synth_splits,
    train_variant,
    variant_key,
)
from hparse.models.heads.attention import AttentionFusion, AttentionParsingHead, attention_targets, parse_attention
from hparse.viz.overlay import draw_boxes, overlay_instances, to_numpy_image
from hparse.viz.topdown import percent, short_run_caveat
from hparse.viz.widgets import slider_explorer

profile = get_profile()
seed_everything(0)
torch.set_num_threads(min(torch.get_num_threads(), 4))
RUNS = Path(hparse.__file__).resolve().parents[1] / "runs" / "attention_ablation"
# Sizes of the runs made on this page: the smoke profile (CI) evaluates on fewer images and fewer crowding values.
RUN_VAL = {"smoke": 4}.get(profile.name, profile.val_images)
RUN_CROWDINGS = (0.0, 0.5, 1.0) if profile.name == "smoke" else CROWDINGS
print(f"profile: {profile.name}; runs made on this page: images {profile.image_size}px, {profile.iterations} "
      f"training steps, backbone {profile.backbone}, {RUN_VAL} val images")

# %% [markdown]
# ## How much of a box is somebody else?
#
# SynthCrowd's `crowding` moves the same people, at the same sizes, from the emptiest places in the image
# (`crowding = 0`) to on top of each other (`crowding = 1`). For each person we measure the fraction of their box's
# pixels that show *other* people. This is the noise the attention branch is meant to remove.

# %%
fractions = {}
for crowding in (0.0, 0.5, 1.0):
    _, val = synth_splits(profile, crowding=crowding, val_images=max(RUN_VAL, 8))
    fractions[crowding] = torch.cat([other_person_fraction(val[i]) for i in range(len(val))]).numpy()

fig, ax = plt.subplots(figsize=(6, 3))
bins = np.linspace(0, 1, 21)
for crowding, values in fractions.items():
    ax.hist(values, bins=bins, histtype="step", lw=2, label=f"crowding {crowding:.1f} (mean {values.mean():.2f})")
ax.set_xlabel("fraction of the box showing other people")
ax.set_ylabel("persons")
ax.set_title("the noise inside a person's box grows with crowding", fontsize=9)
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# ## The code, piece by piece
#
# **Pooling from every level.** FPN normally assigns each RoI to one pyramid level by its size. The parsing branch
# here follows PANet instead: "we apply RoI Align to the features and fuse them with max operation" (Sec. 3.2). One
# `roi_align` per level over all RoIs, then a running maximum:
#
# ```{literalinclude} ../hparse/models/heads/attention.py
# :pyobject: MaxFusedRoIAlign.forward
# ```
#
# **The attention target** is the matched person's mask, cut out of the instance map at the RoI and resized to 28×28
# with nearest interpolation (Sec. 3.2). Other people inside the box are background, which is the whole point:
#
# ```{literalinclude} ../hparse/models/heads/attention.py
# :pyobject: attention_targets
# ```
#
# **The fusion.** Table 5 names a variant `<op>_after_conv<k>[_<modifier>]`. The paper says where `after_conv3` and
# `after_conv4` sit ("between conv3 layer and conv4 layer ... or between conv4 and upsample layer") and that the
# operations are "dot and concatenate". It does not define the modifiers. Our reading is in the module docstring:
# `dot ..._sum` is the residual product $x + x \odot a$, and `concat ..._trans` adds a transition layer
# (1×1 convolution, group norm, ReLU) that maps the $C + 1$ concatenated channels back to $C$.
#
# ```{literalinclude} ../hparse/models/heads/attention.py
# :pyobject: AttentionFusion.forward
# ```
#
# **The branches and Eq. 1.** The attention logits go through a sigmoid and into the parsing stack. The parsing loss
# is therefore back-propagated into the attention branch as well, and the model is trained end to end:
#
# ```{literalinclude} ../hparse/models/attention_rcnn.py
# :pyobject: AttentionRCNN.branch_logits
# ```
#
# ```{literalinclude} ../hparse/models/attention_rcnn.py
# :pyobject: AttentionRCNN.branch_losses
# ```
#
# What each fusion does to the shape of the parsing feature, and how many parameters it adds (256-channel heads, as
# in the paper):

# %%
rows = []
for name in VARIANTS:
    head = AttentionParsingHead(256, 256, fusion=parse_attention(name))
    spec = parse_attention(name)
    extra = sum(p.numel() for p in head.fusion.parameters()) if head.fusion is not None else 0
    where = "—" if spec is None else ("conv3 → conv4" if spec.after == 3 else "conv4 → upsample")
    rows.append(f"| `{name}` | {where} | {head.out_channels} | {extra:,} |")
display(Markdown("| attention | fused between | channels into the next layer | fusion parameters |\n"
                 "|---|---|---|---|\n" + "\n".join(rows)))

x = torch.randn(1, 4, 6, 6)
a = torch.rand(1, 1, 6, 6)
dot = AttentionFusion(parse_attention("dot_after_conv4_sum"), 4)(x, a)
print("dot_after_conv4_sum is x * (1 + a):", torch.allclose(dot, x * (1 + a)))

# %% [markdown]
# ## Training: the Table 5 ablation on SynthCrowd
#
# Every variant is trained with the same data, seed, schedule and detector; only the `attention` flag differs
# (`hparse.experiments.attention_ablation.ablation`). The full runs are made from the command line,
#
# ```
# python -m hparse.experiments.attention_ablation --profile gpu             # Table 5, one results file per variant
# python -m hparse.experiments.attention_ablation --profile gpu --crowding  # AP against crowding
# ```
#
# and write `results/<profile>/attention_rcnn/*.json`. This page reads those files when a gpu or cpu run has been
# made. Otherwise it trains every variant here, at the size of the current profile. Under the `smoke` profile that
# is a few steps on tiny images: enough to check that the pipeline runs end to end, but too little to measure
# anything.

# %%
start = time.perf_counter()
saved = saved_ablation(("gpu", "cpu"))
# Run folders: the command line's (runs/attention_ablation) at the cpu/gpu profiles; a throwaway one under smoke.
run_root = Path(tempfile.mkdtemp(prefix="hparse_attention_")) if profile.name == "smoke" else RUNS
if saved is not None:
    ours = {key: record["metrics"] for key, record in saved["records"].items()}
    first = next(iter(saved["records"].values()))
    ours_profile = saved["profile"]
    ours_iterations, ours_device = first["config"]["train"]["iterations"], first["provenance"]["device"]
    source = (f"results/{ours_profile}/attention_rcnn (a saved run: {ours_iterations} iterations per variant, "
              f"{first['config']['val_images']} val images, {ours_device})")
else:
    ours = ablation(profile, out_root=run_root, write=profile.name != "smoke", val_images=RUN_VAL)
    ours_profile, ours_iterations, ours_device = profile.name, profile.iterations, device_name()
    source = f"trained on this page ({profile.name} profile, {profile.iterations} steps, {RUN_VAL} val images)"
print(f"ablation: {source}; {time.perf_counter() - start:.1f} s")

# %% [markdown]
# ## What the attention branch sees
#
# Below is a crowded SynthCrowd image with its ground-truth boxes. For each box the explorer shows the RoI crop of
# the image, the attention target (the box's own person, 28×28, where other people count as background), the
# pixels of other people in the box, and the attention map predicted by the `concat_after_conv4` model. The model is
# the run's checkpoint when one is on disk; otherwise it is trained here at the profile's size, and under `smoke` its
# maps are close to uniform (magma colour map: black 0, white 1). In a live kernel the slider steps through the boxes;
# the static figure above it shows every box for the rendered book.

# %%
crowd = SynthCrowd("val", num_images=12, image_size=profile.image_size, min_people=3,
                   max_people=max(profile.max_people, 4), crowding=1.0, seed=0)
index = max(range(len(crowd)), key=lambda i: float(other_person_fraction(crowd[i]).max()))
sample = crowd[index]
boxes = sample["boxes"]
ids = torch.arange(1, len(boxes) + 1)
targets28 = attention_targets([sample["instances"]], [boxes], [ids], 28)  # (N, 28, 28)
others28 = attention_targets([sample["instances"]], [boxes], [torch.zeros_like(ids)], 28)  # background of all
others28 = 1 - others28 - targets28  # pixels of other people: neither background nor the box's person
crops = roi_align(sample["image"][None], [boxes], output_size=56, sampling_ratio=2, aligned=True)

start = time.perf_counter()
# A finished run in run_root is loaded (the trainer resumes it at its last step); otherwise it is trained now --
# with the saved run's iterations when it is of this profile, so that its checkpoint is the one loaded.
same_run = saved is not None and ours_profile == profile.name
model, summary, _ = train_variant(profile, "concat_after_conv4", out_root=run_root, with_eval=False,
                                  iterations=ours_iterations if same_run else None)
maps = model.roi_maps([sample["image"]], [boxes])[0]
print(f"model: concat_after_conv4 after {summary['step']} steps ({time.perf_counter() - start:.1f} s)")

fig, ax = plt.subplots(figsize=(4.2, 4.2))
ax.imshow(overlay_instances(sample["image"], sample["instances"]))
draw_boxes(ax, boxes, labels=[f"RoI {i}" for i in range(len(boxes))])
ax.set_title(f"SynthCrowd val, crowding 1.0: {len(boxes)} people", fontsize=9)
ax.axis("off")
fig.tight_layout()
share = other_person_fraction(sample)


def render_roi(i, ax):
    """Crop | attention target | other people | predicted attention for RoI ``i``, side by side."""
    up = lambda m: np.kron(np.asarray(m, dtype=np.float32), np.ones((2, 2)))  # 28 -> 56 for display
    tint = lambda m, rgb: up(m)[..., None] * np.asarray(rgb, dtype=np.float32)  # a mask in one colour
    gap = np.ones((56, 3, 3), dtype=np.float32)  # white separator
    predicted = plt.get_cmap("magma")(up(maps["attention"][i].cpu().numpy()))[..., :3]
    panel = np.concatenate([to_numpy_image(crops[i]) / 255.0, gap, tint(targets28[i], (1, 1, 1)), gap,
                            tint(others28[i], (1, 0.35, 0.2)), gap, predicted], axis=1)
    ax.imshow(panel)
    ax.set_title(f"RoI {i}: crop | target (own person) | other people ({float(share[i]):.0%} of box) | "
                 "predicted attention", fontsize=8)
    ax.axis("off")


# Static companion of the slider: every RoI, one row each.
fig, axes = plt.subplots(len(boxes), 1, figsize=(7, 2.0 * len(boxes)), squeeze=False)
for i, ax in enumerate(axes[:, 0]):
    render_roi(i, ax)
fig.tight_layout()
plt.show()
slider_explorer(render_roi, len(boxes), description="RoI", figsize=(7, 2.2))

# %% [markdown]
# The target column is what the paper means by an RoI-level attention map: inside the very same box, the person
# the box belongs to is white and everyone else is black. A box-level parser without this signal has to infer from
# context alone which of the overlapping bodies to parse.
#
# ## Ours beside the paper: Table 5
#
# The paper reports AP^r on CIHP val (Table 5, ResNet-101, in %), and the model without attention only on CIHP
# *test* (Table 1), so that row is not directly comparable. Ours are SynthCrowd val numbers from the source named
# above. AP^p_50 and AP^p_vol (the mean over IoU thresholds 0.1 to 0.9), which measure how well each person is
# parsed, are shown as well.

# %%
PAPER = {  # paper numbers: AP^r_vol, AP^r_50, AP^r_60, AP^r_70 (Table 5: CIHP val; None: Table 1, CIHP test)
    None: ("Table 1, test", 36.2, 41.0, 33.4, 23.8),
    "dot_after_conv3_sum": ("Table 5, val", 32.8, 36.5, 29.7, 21.0),
    "dot_after_conv4_sum": ("Table 5, val", 33.1, 36.1, 28.4, 19.3),
    "concat_after_conv4_trans": ("Table 5, val", 34.1, 38.1, 30.9, 21.6),
    "concat_after_conv4": ("Table 5, val", 36.2, 40.7, 33.9, 25.1),
}
KEYS = ("APrvol", "APr50", "APr60", "APr70", "APp50", "APpvol", "mIoU")


lines = ["| attention | ours " + " | ours ".join(KEYS) + " | paper source | paper APrvol | paper APr50 | paper APr60 "
         "| paper APr70 |", "|---" * (len(KEYS) + 6) + "|"]
for variant in VARIANTS:
    metrics = ours[variant_key(variant)]
    source_name, *paper = PAPER[variant]
    lines.append(f"| `{variant}` | " + " | ".join(percent(metrics.get(k)) for k in KEYS) + f" | {source_name} | "
                 + " | ".join(f"{v:.1f}" for v in paper) + " |")
display(Markdown("\n".join(lines)))
display(Markdown(f"Ours: {source}."))
caveat = short_run_caveat(ours_profile, ours_iterations, ours_device, made_here=saved is None)
if caveat:
    display(Markdown(caveat))

# %% [markdown]
# In the paper, concatenation beats the product: both `concat_after_conv4` variants beat both `dot` variants on every
# AP^r column, while moving the product from after conv3 to after conv4 changes little (AP^r_vol +0.3, AP^r_50
# −0.4). The gap between the best and worst rows is 3.4 points of AP^r_vol on CIHP, larger than the 0.8-point gain
# of the final model over the model without attention on the test set (Table 1). Part of that gap is the fusion choice itself, so the choice matters about as much as
# having attention at all.
#
# ## Does attention help more in crowds?
#
# The paper's case for the attention branch is crowded scenes (Sec. 1, Fig. 1, Fig. 3), but it reports no numbers by
# crowd density. SynthCrowd lets us measure this: the models are trained at the default crowding (0.5) and evaluated
# on the same val people rendered at increasing `crowding`
# (`hparse.experiments.attention_ablation.crowding_sweep`).

# %%
def saved_or_run(name, run):
    """The saved sweep ``name`` from results/ (gpu, then cpu); without one, ``run`` on this page at this profile."""
    record = saved_sweep(name)
    if record is not None:
        return {**record, "made_here": False}
    sweep = run(profile, crowdings=RUN_CROWDINGS, out_root=run_root, write=profile.name != "smoke",
                models={"concat_after_conv4": model}, val_images=RUN_VAL)
    return {"sweep": sweep, "profile": profile.name, "iterations": profile.iterations, "device": device_name(),
            "made_here": True,
            "source": f"run on this page ({profile.name} profile, {RUN_VAL} val images per crowding)"}


start = time.perf_counter()
record = saved_or_run("crowding", crowding_sweep)
sweep, sweep_source = record["sweep"], record["source"]
print(f"crowding sweep: {sweep_source}; {time.perf_counter() - start:.1f} s")

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for ax, key, title in zip(axes, ("APp50", "APr50"), ("AP$^p_{50}$", "AP$^r_{50}$")):
    for variant, style in (("none", "o--"), ("concat_after_conv4", "s-")):
        values = [np.nan if v is None else v for v in sweep["variants"][variant][key]]
        ax.plot(sweep["crowding"], values, style, label="w/o attention" if variant == "none" else variant)
    twin = ax.twinx()
    twin.bar(sweep["crowding"], sweep["other_person_fraction"], width=0.08, alpha=0.15, color="gray")
    twin.set_ylim(0, max(0.5, 1.2 * max(sweep["other_person_fraction"])))
    twin.set_ylabel("mean share of box showing others", fontsize=8, color="gray")
    ax.set_xlabel("SynthCrowd crowding (val)")
    ax.set_ylabel(title)
    ax.set_title(f"{title} against crowding", fontsize=9)
    ax.legend(fontsize=8)
fig.suptitle(f"ours: {sweep_source}", fontsize=8)
fig.tight_layout()

# %% [markdown]
# The gray bars show how much of a person's box belongs to other people at each crowding. If the attention branch
# does what the paper claims, the gap between the two curves should grow with the bars. What this run shows, read
# from its numbers:

# %%
with_att, without = sweep["variants"]["concat_after_conv4"], sweep["variants"]["none"]
lines = ["| crowding | share of box showing others | AP^p_50 gain from attention | AP^r_50 gain from attention |",
         "|---|---|---|---|"]
gains = {}
for i, crowding in enumerate(sweep["crowding"]):
    row = []
    for key in ("APp50", "APr50"):
        a, b = with_att[key][i], without[key][i]
        gain = None if a is None or b is None else round(100 * (a - b), 2) + 0.0  # points; + 0.0: no "-0.00"
        gains.setdefault(key, []).append(gain)
        row.append("–" if gain is None else f"{gain:+.2f}")
    lines.append(f"| {crowding:.2f} | {100 * sweep['other_person_fraction'][i]:.0f}% | " + " | ".join(row) + " |")
valid = [(c, g) for c, g in zip(sweep["crowding"], gains["APr50"]) if g is not None]
verdict = ""
NOISE_POINTS = 0.5  # below this, a difference in AP between two single-seed runs is not read as an effect
spread = max((abs(g) for _, g in valid), default=0.0)
if len(valid) >= 2 and spread < NOISE_POINTS:
    verdict = (f"\n\nThe AP^r_50 gain from attention stays within ±{spread:.2f} points at every crowding, below the "
               f"{NOISE_POINTS} points we would read as an effect: this run measures no effect of attention at any "
               "crowding.")
elif len(valid) >= 2:
    best = max(valid, key=lambda cg: cg[1])
    trend = "grows" if valid[-1][1] > valid[0][1] else "does not grow"
    verdict = (f"\n\nThe AP^r_50 gain from attention (points) {trend} from the sparsest to the most crowded val set "
               f"({valid[0][1]:+.2f} → {valid[-1][1]:+.2f}); it is largest at crowding {best[0]:.2f} "
               f"({best[1]:+.2f}).")
caveat = short_run_caveat(record["profile"], record["iterations"], record["device"], made_here=record["made_here"])
display(Markdown("\n".join(lines) + verdict + (f"\n\n{caveat}" if caveat else "")))

# %% [markdown]
# ## Inside the box, without the detector
#
# AP^p and AP^r score the whole pipeline: a person the detector misses, or boxes badly, costs AP whatever the parsing
# branch does. The attention branch's claim is narrower. *Given* a box, it should stop the parsing branch from
# labelling the other people inside it. We can test that claim directly: parse every ground-truth person's box
# (oracle RoIs, `model.roi_maps`) and score the 56×56 labels against that person alone
# (`hparse.experiments.attention_ablation.roi_noise`):
#
# - **other-people leakage**: the share of the cells that show *other* people and still get a part label. This is
#   the "noise from other instances" of Sec. 3.1, so lower is better;
# - **own recall**: the share of the person's own part cells that get a part label (a model that labels nothing
#   leaks nothing, so leakage is read together with recall);
# - **RoI mIoU**: the part mIoU inside the boxes, background included.
#
# This measure needs a trained parsing branch but no trained detector, so it can tell the variants apart earlier in
# training than AP can. Leakage is read beside recall: a model that labels more of every box raises both.

# %%
start = time.perf_counter()
roi_record = saved_or_run("roi_noise", roi_noise_sweep)
roi_sweep, roi_source = roi_record["sweep"], roi_record["source"]
print(f"oracle-box RoI measure: {roi_source}; {time.perf_counter() - start:.1f} s")

fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
for ax, key, title in zip(axes, ("other_leakage", "own_recall", "roi_mIoU"),
                          ("other-people cells given a part label", "own part cells given a part label",
                           "part mIoU inside the boxes")):
    for variant, style in (("none", "o--"), ("concat_after_conv4", "s-")):
        values = [np.nan if v is None else v for v in roi_sweep["variants"][variant][key]]
        ax.plot(roi_sweep["crowding"], values, style, label="w/o attention" if variant == "none" else variant)
    ax.set_xlabel("SynthCrowd crowding (val)")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
fig.suptitle(f"ours, ground-truth boxes: {roi_source}", fontsize=8)
fig.tight_layout()

with_att, without = roi_sweep["variants"]["concat_after_conv4"], roi_sweep["variants"]["none"]
lines = ["| crowding | share of box showing others | leakage w/o attention | leakage with attention "
         "| own recall w/o | own recall with | RoI mIoU w/o | RoI mIoU with |", "|---" * 8 + "|"]
for i, crowding in enumerate(roi_sweep["crowding"]):
    cells = [percent(rows[key][i]) for key in ("other_leakage", "own_recall", "roi_mIoU")
             for rows in (without, with_att)]
    lines.append(f"| {crowding:.2f} | {100 * roi_sweep['other_person_fraction'][i]:.0f}% | " + " | ".join(cells) + " |")
valid = [(c, a, b) for c, a, b in zip(roi_sweep["crowding"], with_att["other_leakage"], without["other_leakage"])
         if a is not None and b is not None]
verdict = ""
if valid:
    lower = sum(a < b for _, a, b in valid)
    verdict = (f"\n\nWith attention, other people leak into the part labels less at {lower} of {len(valid)} "
               f"crowding values; the difference (points, with minus without) runs "
               + ", ".join(f"{100 * (a - b):+.2f} at {c:.2f}" for c, a, b in valid) + ".")
caveat = short_run_caveat(roi_record["profile"], roi_record["iterations"], roi_record["device"],
                          made_here=roi_record["made_here"])
display(Markdown("Percentages.\n\n" + "\n".join(lines) + verdict + (f"\n\n{caveat}" if caveat else "")))

# %% [markdown]
# ## Summary
#
# - The RoI attention framework {cite:p}`roiattention2019` is Faster R-CNN with two RoI heads: a parsing branch fed
#   with max-fused features from every pyramid level, and an attention branch that predicts the foreground of the
#   box's own person.
# - The attention target is the matched person's mask *inside the box*. Other people in the same box are
#   background, and that is where the extra signal comes from: the parsing branch cannot tell the overlapping
#   bodies apart on its own.
# - Eq. 1 sums the detector, attention and parsing losses with the parsing loss weighted 5×. The attention branch
#   learns from its own loss and, through the fusion, from the parsing loss.
# - Table 5's names leave the modifiers undefined. We read `_sum` as a residual product and `_trans` as a transition
#   layer after the concatenation, and every variant is one `attention=` flag away in `hparse`.
#
# ## Exercises
#
# 1. Train `attention="dot_after_conv4"` (the plain gate $x \odot a$, no `_sum`). What happens to the features of the
#    parts the attention map misses? Compare its loss curve with `dot_after_conv4_sum`.
# 2. Set `attention_loss_weight=0`: the attention map is then trained only through the parsing loss. Does it still
#    look like a person mask? Plot `model.roi_maps(...)["attention"]` for the image above.
# 3. Replace the max fusion by FPN's level assignment (`roi_fusion="level"`) and rerun the ablation row of
#    `concat_after_conv4`. Which persons (small or large) lose the most?
# 4. `build_model("attention_rcnn", ..., return_masks=True)` also returns each person's pasted attention mask. Score
#    those masks as instance segmentation against `instances == k`. How do they compare with the union of the
#    predicted parts?
