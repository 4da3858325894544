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
import os
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display
from torchvision.ops import roi_align

import hparse
from hparse.data import CIHP_LABELS, SynthCrowd
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
    seed_model,
    sweep_spread,
    synth_splits,
    variant_key,
)
from hparse.experiments.runner import VERDICTS, exceeds_spread, load_predictions, saved_artefacts
from hparse.models.heads.attention import AttentionFusion, AttentionParsingHead, attention_targets, parse_attention
from hparse.viz.overlay import draw_boxes, overlay_instances, to_numpy_image
from hparse.viz.topdown import MarkdownTables, ablation_table, percent, saved_prediction_grid, short_run_caveat
from hparse.viz.widgets import slider_explorer

profile = get_profile()
seed_everything(0)
torch.set_num_threads(min(torch.get_num_threads(), 4))
RUNS = Path(hparse.__file__).resolve().parents[1] / "runs" / "attention_ablation"
# Sizes of the runs made on this page (only for what results/ does not hold): the smoke profile (CI) evaluates on
# fewer images and fewer crowding values, with two seeds.
RUN_VAL = {"smoke": 4}.get(profile.name, profile.val_images)
RUN_CROWDINGS = (0.0, 0.5, 1.0) if profile.name == "smoke" else CROWDINGS
RUN_SEEDS = (0, 1) if profile.name == "smoke" else (0, 1, 2)
print(f"profile: {profile.name}; runs made on this page: images {profile.image_size}px, {profile.iterations} "
      f"training steps, backbone {profile.backbone}, {RUN_VAL} val images, seeds {RUN_SEEDS}")

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
# Every variant is trained with the same data, schedule and detector, and with several seeds; only the `attention`
# flag differs (`hparse.experiments.attention_ablation.ablation`, on the variants × seeds runner
# `hparse.experiments.runner.run_variants`). The full runs are made from the command line,
#
# ```
# python -m hparse.experiments.attention_ablation --profile cpu               # Table 5, seeds 0 1 2, a record per variant
# python -m hparse.experiments.attention_ablation --profile cpu --crowding    # AP against crowding, every seed's model
# python -m hparse.experiments.attention_ablation --profile cpu --roi-noise   # the oracle-box RoI measure
# ```
#
# and write `results/<profile>/attention_rcnn/*.json` (each seed's metrics, their mean and spread), with the first
# seed's training log and predictions beside them. This page reads those files when a gpu or cpu run has been
# made; a record of the older one-seed format is shown as one seed, without a spread. Otherwise it trains every variant here, at the size of the current profile. Under the `smoke` profile that
# is a few steps on tiny images: enough to check that the pipeline runs end to end, but too little to measure
# anything.

# %% tags=["hide-input"]
start = time.perf_counter()
saved = saved_ablation(("gpu", "cpu"))
# Run folders: the command line's (runs/attention_ablation) at the cpu/gpu profiles; a throwaway one under smoke,
# whose records and artefacts go to a temporary results folder too.
run_root = Path(tempfile.mkdtemp(prefix="hparse_attention_")) if profile.name == "smoke" else RUNS
run_results = run_root / "results" if profile.name == "smoke" else None
made_here = saved is None
if made_here:
    old_results = os.environ.get("HPARSE_RESULTS")
    if run_results is not None:
        os.environ["HPARSE_RESULTS"] = str(run_results)
    try:
        ablation(profile, seeds=RUN_SEEDS, out_root=run_root, val_images=RUN_VAL)
        saved = saved_ablation((profile.name,))
    finally:
        if run_results is not None:
            os.environ.pop("HPARSE_RESULTS") if old_results is None else os.environ.update(HPARSE_RESULTS=old_results)
ours_profile = saved["profile"]
first = saved["records"]["none"]
ours_iterations, ours_device = first["config"]["train"]["iterations"], first["provenance"]["device"]
source = (f"trained on this page ({profile.name} profile, {ours_iterations} steps, {RUN_VAL} val images)" if made_here
          else f"results/{ours_profile}/attention_rcnn (a saved run: {ours_iterations} iterations per variant, "
          f"{first['config']['val_images']} val images, {ours_device})")
# The first seed's kept predictions of each variant (None where the run kept none, e.g. records of an older format).
artefacts = {variant_key(v): saved_artefacts("attention_rcnn", variant_key(v), (ours_profile,),
                                            root=run_results if made_here else None) for v in VARIANTS}
print(f"ablation: {source}; {time.perf_counter() - start:.1f} s")

# %% [markdown]
# ## What the attention branch sees
#
# Below is a crowded SynthCrowd val image with its ground-truth boxes. For each box the explorer shows the RoI crop of
# the image, the attention target (the box's own person, 28×28, where other people count as background), the
# pixels of other people in the box, and the attention map predicted by the `concat_after_conv4` model for that box
# (magma colour map: black 0, white 1). The maps come from the predictions kept beside the ablation's records (the
# first seed's model on four val images, the most crowded of which is shown). Without a saved run they come from a
# model trained on this page at the current profile's size, and under `smoke` that model's maps are close to uniform;
# the line under the figure says which. In a live kernel the slider steps through the boxes; the static figure shows
# the first boxes for the rendered book.

# %% tags=["hide-input"]
start = time.perf_counter()
kept = artefacts["concat_after_conv4"]
if kept is not None and kept["predictions"] is not None and load_predictions(kept["predictions"])["roi_maps"]:
    saved_maps = load_predictions(kept["predictions"])
    crowded = [float(other_person_fraction({"instances": t["instances"].long(), "boxes": t["boxes"]}).max())
               for t in saved_maps["targets"]]
    index = max(range(len(crowded)), key=crowded.__getitem__)
    target = saved_maps["targets"][index]
    sample = {"image": saved_maps["images"][index].float() / 255, "instances": target["instances"].long(),
              "boxes": saved_maps["roi_maps"][index]["boxes"]}
    attention = saved_maps["roi_maps"][index]["attention"].float()
    maps_source = (f"the first seed's `concat_after_conv4` model after {saved_maps['iterations']} steps, kept in "
                   f"results/{ours_profile}/attention_rcnn/predictions/ (val image {saved_maps['image_ids'][index]})"
                   if not made_here else f"the `concat_after_conv4` model trained on this page "
                   f"({saved_maps['iterations']} steps, {profile.name} profile; no saved run exists)")
else:  # no saved predictions: the model of a run made here, at this profile's size, on a crowding-1.0 image
    crowd = SynthCrowd("val", num_images=12, image_size=profile.image_size, min_people=3,
                       max_people=max(profile.max_people, 4), crowding=1.0, seed=0)
    index = max(range(len(crowd)), key=lambda i: float(other_person_fraction(crowd[i]).max()))
    sample = crowd[index]
    model, metrics = seed_model(profile, "concat_after_conv4", 0, out_root=run_root, val_images=RUN_VAL,
                                iterations=ours_iterations if ours_profile == profile.name else None)
    attention = model.roi_maps([sample["image"]], [sample["boxes"]])[0]["attention"]
    maps_source = (f"a `concat_after_conv4` model trained on this page ({metrics['iterations']} steps, "
                   f"{profile.name} profile): the saved run kept no predictions")
boxes = sample["boxes"]
ids = torch.arange(1, len(boxes) + 1)
targets28 = attention_targets([sample["instances"]], [boxes], [ids], 28)  # (N, 28, 28)
others28 = attention_targets([sample["instances"]], [boxes], [torch.zeros_like(ids)], 28)  # background of all
others28 = 1 - others28 - targets28  # pixels of other people: neither background nor the box's person
crops = roi_align(sample["image"][None], [boxes], output_size=56, sampling_ratio=2, aligned=True)
share = other_person_fraction(sample)
print(f"attention maps from {maps_source} ({time.perf_counter() - start:.1f} s)")

# %%
fig, ax = plt.subplots(figsize=(4.2, 4.2))
ax.imshow(overlay_instances(sample["image"], sample["instances"]))
draw_boxes(ax, boxes, labels=[f"RoI {i}" for i in range(len(boxes))])
ax.set_title(f"SynthCrowd val: {len(boxes)} people", fontsize=9)
ax.axis("off")
fig.tight_layout()


def render_roi(i, ax):
    """Crop | attention target | other people | predicted attention for RoI ``i``, side by side."""
    up = lambda m: np.kron(np.asarray(m, dtype=np.float32), np.ones((2, 2)))  # 28 -> 56 for display
    tint = lambda m, rgb: up(m)[..., None] * np.asarray(rgb, dtype=np.float32)  # a mask in one colour
    gap = np.ones((56, 3, 3), dtype=np.float32)  # white separator
    predicted = plt.get_cmap("magma")(up(attention[i].cpu().numpy()))[..., :3]
    panel = np.concatenate([to_numpy_image(crops[i]) / 255.0, gap, tint(targets28[i], (1, 1, 1)), gap,
                            tint(others28[i], (1, 0.35, 0.2)), gap, predicted], axis=1)
    ax.imshow(panel)
    ax.set_title(f"RoI {i}: crop | target (own person) | other people ({float(share[i]):.0%} of box) | "
                 "predicted attention", fontsize=8)
    ax.axis("off")


# Static companion of the slider: the first RoIs, one row each.
shown = list(range(min(len(boxes), 4)))
fig, axes = plt.subplots(len(shown), 1, figsize=(7, 2.0 * len(shown)), squeeze=False)
for i, ax in zip(shown, axes[:, 0]):
    render_roi(i, ax)
fig.suptitle(f"attention maps: {maps_source}", fontsize=7)
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

# %% tags=["hide-input"]
PAPER_COLUMNS = ("APrvol", "APr50", "APr60", "APr70")
PAPER = {  # paper numbers: AP^r_vol, AP^r_50, AP^r_60, AP^r_70 (Table 5: CIHP val; w/o attention: Table 1, CIHP test)
    None: ("Table 1, test", (36.2, 41.0, 33.4, 23.8)),
    "dot_after_conv3_sum": ("Table 5, val", (32.8, 36.5, 29.7, 21.0)),
    "dot_after_conv4_sum": ("Table 5, val", (33.1, 36.1, 28.4, 19.3)),
    "concat_after_conv4_trans": ("Table 5, val", (34.1, 38.1, 30.9, 21.6)),
    "concat_after_conv4": ("Table 5, val", (36.2, 40.7, 33.9, 25.1)),
}
LABELS_05 = {variant_key(v): "w/o attention" if v is None else f"`{v}`" for v in VARIANTS}
display(MarkdownTables(ablation_table(
    saved, LABELS_05, paper={variant_key(v): (src, dict(zip(PAPER_COLUMNS, values))) for v, (src, values)
                             in PAPER.items()}, made_here=made_here)))
display(Markdown(f"Ours: {source}."))

# %% [markdown]
# The first seed's predictions of one val image without and with attention, from the predictions kept beside the
# records (or from the runs made on this page when no saved run exists):

# %%
fig = saved_prediction_grid({"w/o attention": (artefacts["none"] or {}).get("predictions"),
                             "concat_after_conv4": (artefacts["concat_after_conv4"] or {}).get("predictions")},
                            CIHP_LABELS, cols=3, size=2.4)
if fig is None:
    print("no saved predictions of the ablation (records of an older format keep none)")
else:
    fig.suptitle(f"{ours_profile} ablation, first seed ({'run made on this page' if made_here else 'saved run'})",
                 fontsize=8)
    fig.tight_layout()

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

# %% tags=["hide-input"]
def saved_or_run(name, run):
    """The saved sweep ``name`` from results/ (gpu, then cpu); without one, ``run`` on this page at this profile
    (reusing the ablation's runs made on this page, or training the two variants' seeds here)."""
    record = saved_sweep(name)
    if record is not None:
        return {**record, "made_here": False}
    sweep = run(profile, seeds=RUN_SEEDS, crowdings=RUN_CROWDINGS, out_root=run_root, write=profile.name != "smoke",
                val_images=RUN_VAL)
    return {"sweep": sweep, "profile": profile.name, "iterations": profile.iterations, "device": device_name(),
            "seeds": list(RUN_SEEDS), "made_here": True,
            "source": f"run on this page ({profile.name} profile, {RUN_VAL} val images per crowding, seeds "
                      f"{list(RUN_SEEDS)})"}


def plot_sweep(ax, sweep, key):
    """Mean over seeds against crowding, with and without attention; the band is ± one standard deviation."""
    for variant, style in (("none", "o--"), ("concat_after_conv4", "s-")):
        mean, std = sweep_spread(sweep, variant, key)
        mean = np.array([np.nan if m is None else m for m in mean])
        std = np.array([np.nan if s is None else s for s in std])
        line, = ax.plot(sweep["crowding"], mean, style, label="w/o attention" if variant == "none" else variant)
        ax.fill_between(sweep["crowding"], mean - std, mean + std, color=line.get_color(), alpha=0.2)


def gain_row(sweep, key, i):
    """(gain in points of attention over none at crowding i, whether it exceeds the spread over seeds or None)."""
    a, sa = (v[i] for v in sweep_spread(sweep, "concat_after_conv4", key))
    b, sb = (v[i] for v in sweep_spread(sweep, "none", key))
    if a is None or b is None:
        return None, None
    if len(sweep.get("seeds") or [None]) < 2:
        return round(100 * (a - b), 2) + 0.0, None
    return round(100 * (a - b), 2) + 0.0, exceeds_spread({"mean": {key: a}, "std": {key: sa}},
                                                        {"mean": {key: b}, "std": {key: sb}}, key)


def seeds_flag(seeds):
    """``--seeds ...`` unless a sweep used the default seeds 0 1 2 (or its seeds are unknown)."""
    seeds = [s for s in (seeds or []) if s is not None]
    return "" if not seeds or seeds == [0, 1, 2] else " --seeds " + " ".join(map(str, seeds))
start = time.perf_counter()
record = saved_or_run("crowding", crowding_sweep)
sweep, sweep_source = record["sweep"], record["source"]
print(f"crowding sweep: {sweep_source}; {time.perf_counter() - start:.1f} s")

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for ax, key, title in zip(axes, ("APp50", "APr50"), ("AP$^p_{50}$", "AP$^r_{50}$")):
    plot_sweep(ax, sweep, key)
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

# %% tags=["hide-input"]
lines = ["| crowding | share of box showing others | AP^p_50 gain from attention | AP^r_50 gain from attention |",
         "|---|---|---|---|"]
verdicts = []
for i, crowding in enumerate(sweep["crowding"]):
    cells = []
    for key in ("APp50", "APr50"):
        gain, exceeds = gain_row(sweep, key, i)
        cells.append("–" if gain is None else f"{gain:+.2f} ({VERDICTS[exceeds]})")
        if key == "APr50" and gain is not None:
            verdicts.append((crowding, gain, exceeds))
    lines.append(f"| {crowding:.2f} | {100 * sweep['other_person_fraction'][i]:.0f}% | " + " | ".join(cells) + " |")
verdict = ""
if verdicts and all(e is None for _, _, e in verdicts):
    verdict = ("\n\nThese numbers come from one seed, so there is no spread to tell an effect from the noise of "
               "training.")
elif verdicts:
    real = [(c, g) for c, g, e in verdicts if e]
    verdict = (f"\n\nThe AP^r_50 gain from attention exceeds the spread over seeds at {len(real)} of {len(verdicts)} "
               "crowding values" + (": " + ", ".join(f"{g:+.2f} points at {c:.2f}" for c, g in real) if real else
                                    "; this run measures no effect of attention at any crowding") + ".")
caveat = short_run_caveat(record["profile"], record["iterations"], record["device"], made_here=record["made_here"])
reproduce = (f"\n\nReproduce ours: `python -m hparse.experiments.attention_ablation --profile {record['profile']} "
             f"--crowding{seeds_flag(record['seeds'])}`")
display(MarkdownTables(f"Points (mean over seeds {record['seeds']}, with minus without attention).\n\n"
                       + "\n".join(lines) + reproduce + verdict + (f"\n\n{caveat}" if caveat else "")))

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

# %% tags=["hide-input"]
start = time.perf_counter()
roi_record = saved_or_run("roi_noise", roi_noise_sweep)
roi_sweep, roi_source = roi_record["sweep"], roi_record["source"]
print(f"oracle-box RoI measure: {roi_source}; {time.perf_counter() - start:.1f} s")

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
for ax, key, title in zip(axes, ("other_leakage", "own_recall", "roi_mIoU"),
                          ("other-people cells given a part label", "own part cells given a part label",
                           "part mIoU inside the boxes")):
    plot_sweep(ax, roi_sweep, key)
    ax.set_xlabel("SynthCrowd crowding (val)")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
fig.suptitle(f"ours, ground-truth boxes: {roi_source}", fontsize=8)
fig.tight_layout()

# %% tags=["hide-input"]
def cell(sweep, variant, key, i):
    mean, std = (v[i] for v in sweep_spread(sweep, variant, key))
    return percent(mean) + ("" if mean is None or len(sweep.get("seeds") or [None]) < 2 else f" ± {percent(std)}")


lines = ["| crowding | share of box showing others | leakage w/o attention | leakage with attention "
         "| leakage: difference exceeds the spread? | own recall w/o | own recall with | RoI mIoU w/o | RoI mIoU with |",
         "|---" * 9 + "|"]
leak = []
for i, crowding in enumerate(roi_sweep["crowding"]):
    gain, exceeds = gain_row(roi_sweep, "other_leakage", i)
    if gain is not None:
        leak.append((crowding, gain, exceeds))
    cells = [cell(roi_sweep, v, "other_leakage", i) for v in ("none", "concat_after_conv4")]
    cells.append("–" if gain is None else f"{gain:+.2f} ({VERDICTS[exceeds]})")
    cells += [cell(roi_sweep, v, key, i) for key in ("own_recall", "roi_mIoU") for v in ("none", "concat_after_conv4")]
    lines.append(f"| {crowding:.2f} | {100 * roi_sweep['other_person_fraction'][i]:.0f}% | " + " | ".join(cells) + " |")
verdict = ""
if leak:
    lower = [(c, g) for c, g, e in leak if e and g < 0]
    higher = [(c, g) for c, g, e in leak if e and g > 0]
    verdict = (f"\n\nWith attention, other people leak into the part labels less, by more than the spread over seeds, "
               f"at {len(lower)} of {len(leak)} crowding values, and more at {len(higher)}."
               if any(e is not None for _, _, e in leak) else
               "\n\nThese numbers come from one seed: there is no spread to tell an effect from training noise.")
caveat = short_run_caveat(roi_record["profile"], roi_record["iterations"], roi_record["device"],
                          made_here=roi_record["made_here"])
reproduce = (f"\n\nReproduce ours: `python -m hparse.experiments.attention_ablation --profile {roi_record['profile']} "
             f"--roi-noise{seeds_flag(roi_record['seeds'])}`")
display(MarkdownTables(f"Percentages, mean ± standard deviation over seeds {roi_record['seeds']}; the difference is in "
                       "points, with minus without attention.\n\n" + "\n".join(lines) + reproduce + verdict
                       + (f"\n\n{caveat}" if caveat else "")))

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
