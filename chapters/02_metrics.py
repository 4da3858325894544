# ---
# jupyter:
#   jupytext:
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # Measuring instance-level human parsing: mIoU, AP^p, PCP and AP^r
#
# Every number in this book is a comparison: our Parsing R-CNN against the paper's {cite:p}`parsingrcnn2019`, our
# Instance CRF against {cite:p}`holistic2017`. Such a comparison means something only if both sides are measured the
# same way, and the four metrics of the field are defined less by their papers than by the **official evaluation
# scripts**. Those scripts settle questions the papers leave open: is background part of a person's IoU? Can two
# predictions both match one ground-truth part? Is the threshold `>` or `≥`? What happens to persons that overlap?
# This chapter states the answers, shows the code that implements them (`hparse.metrics`), and then measures what
# each metric rewards by breaking a perfect prediction in controlled ways.
#
# | metric | unit | question it asks | official code |
# | --- | --- | --- | --- |
# | **mIoU** | pixel | is every pixel's part label right, whoever it belongs to? | Parsing R-CNN `parsing_eval.py`, PGN `test_pgn.py` |
# | **AP^p** | person | is each person found *and* parsed well (mean part IoU > t)? {cite:p}`mhp2018` | MHP v2 `eval_mhp.py`, Parsing R-CNN |
# | **PCP** | part of a found person | which fraction of a person's parts is right? | the same scripts |
# | **AP^r** | (person, part) region | is each part *instance* segmented (IoU > t)? {cite:p}`cihp2018` | CIHP `test_inst_part_ap.py`, Oxford TVG |
#
# AP^p and AP^r are reported at IoU thresholds 0.1, 0.2, …, 0.9: $\mathrm{AP}_{50}$ at 0.5 and
# $\mathrm{AP}_{vol}$, the mean over the nine. All values are fractions in [0, 1] (the tables print percentages).

# %%
import numpy as np
import torch
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from hparse.data import CIHP_LABELS, SynthCrowd
from hparse.engine import find_results, get_profile, seed_everything
from hparse.metrics import ParsingEvaluator, paint_persons, painted_maps, person_part_iou, person_pixels
from hparse.metrics.corruptions import CORRUPTIONS, prediction_from_target
from hparse.viz import overlay_instances, overlay_semantic, to_numpy_image

profile = get_profile()
seed_everything(0)
torch.set_num_threads(min(torch.get_num_threads(), 4))
NUM_IMAGES = {"smoke": 8, "cpu": 100, "gpu": 500}[profile.name]
dataset = SynthCrowd(split="val", num_images=NUM_IMAGES, image_size=profile.image_size, min_people=2,
                     max_people=max(profile.max_people, 3), seed=0)
samples = [dataset[i] for i in range(len(dataset))]
N = CIHP_LABELS.num_classes
print(f"profile {profile.name}: {len(samples)} SynthCrowd val images of {profile.image_size}px, "
      f"{sum(len(s['boxes']) for s in samples)} people, {N} labels (CIHP)")


def evaluate(pairs, **mode):
    """Score (prediction, target) pairs with one ParsingEvaluator; ``mode`` selects the official variant."""
    evaluator = ParsingEvaluator(N, **mode)
    for pred, target in pairs:
        evaluator.update(pred, target)
    return evaluator.compute()


def pct(value):
    return "–" if value is None or np.isnan(value) else f"{100 * value:.1f}"


# %% [markdown]
# ## mIoU: one confusion matrix for the whole split
#
# mIoU ignores persons entirely. The official code sums one $n \times n$ confusion matrix (rows ground truth, columns
# prediction) over **every image of the split** and only then takes $\mathrm{IoU}_c = \frac{\text{diag}_c}
# {\text{row}_c + \text{col}_c - \text{diag}_c}$, averaging over all $n$ classes including background. So a large
# image weighs more than a small one, and a class that never occurs (0/0) is skipped (`absent_class="nan"`, Parsing
# R-CNN and PGN) — or counted as 0 by MG-HumanParsing and QANet (`absent_class="zero"`), which matters on MHP v2's
# 59 classes. Ground-truth pixels labelled 255 are dropped.
#
# ```{literalinclude} ../hparse/metrics/semantic.py
# :pyobject: iou_from_confusion
# ```
#
# ## AP^p and PCP: is each person parsed?
#
# AP^p {cite:p}`mhp2018` treats a whole person as the object to detect. For a predicted person and a ground-truth
# person, the MHP and Parsing R-CNN scripts build a confusion matrix over the **whole image** between the two
# per-person part maps and take the `nanmean` of the per-class IoUs: classes present in either map count, **background
# included**. Each prediction, in descending score order, takes the ground truth with the best mean IoU; it is a true
# positive at threshold $t$ if that mean IoU is **strictly** above $t$ and the ground truth is still free — otherwise
# a false positive, *without* trying the second-best ground truth. AP is the VOC all-point area under the
# precision/recall curve. PCP counts, for each true positive, the fraction of the person's parts whose IoU is above
# the same $t$, summed and divided by the number of ground-truth persons — so a missed person counts as 0.
#
# ```{literalinclude} ../hparse/metrics/part_ap.py
# :pyobject: match_persons
# ```
#
# All IoUs of all predicted × ground-truth persons of an image come from one pass over the image and one over the
# predicted foreground (`person_part_iou`), not from $D \times G$ full-image confusion matrices.
#
# The background term matters more than it looks. Take a person with two parts and a prediction that gets one part
# exactly and misses the other:

# %%
sem = torch.zeros(8, 8, dtype=torch.int64)
sem[1:4, 2:6], sem[4:7, 2:6] = 5, 9  # upper clothes over pants: one small person on an 8x8 image
inst = (sem > 0).long()
half = torch.where(sem == 5, sem, 0)[None]  # the prediction misses the pants
ious = person_part_iou(person_pixels(half), sem, inst, 1, N)
iou_row = ious.class_iou[0, 0]
present = ~np.isnan(iou_row)
with_bg = float(ious.mean_iou[0, 0])
without_bg = float(np.nanmean(iou_row[1:]))
display(Markdown(
    "| class | " + " | ".join(CIHP_LABELS.names[c] for c in np.nonzero(present)[0]) + " | mean (official) | mean without background |\n"
    + "|---" * (int(present.sum()) + 3) + "|\n"
    + "| IoU | " + " | ".join(f"{v:.3f}" for v in iou_row[present]) + f" | **{with_bg:.3f}** | {without_bg:.3f} |"))

# %% [markdown]
# The official mean is above 0.5 although half the person is missing: this prediction is a true positive at
# $t = 0.5$ and $t = 0.6$. The smaller the person relative to the image, the closer the background IoU is to 1,
# and the more forgiving AP^p becomes at low thresholds.
#
# ## AP^r: is each part instance segmented?
#
# AP^r {cite:p}`holistic2017,cihp2018` scores every (person, part) region on its own. The CIHP script stores a
# prediction as **one** indexed PNG, so predicted regions cannot overlap: persons are painted in ascending score
# order and the highest score owns a contested pixel. Each predicted region of class $c$ then takes its **best** IoU
# over all class-$c$ ground-truth regions of the image — there is no one-to-one assignment, so two predictions can
# both be true positives on the same ground truth and recall can exceed 1. AP is computed per class over the split and
# averaged with `np.mean` over all part classes: a class nobody predicts and nobody annotated contributes **0**.
#
# ```{literalinclude} ../hparse/metrics/region_ap.py
# :pyobject: part_region_iou
# ```
#
# The golden case from the notes on the official code: one ground-truth part predicted as two halves.

# %%
gt = torch.tensor([[1, 1, 1, 1, 0, 0]])
halves = torch.tensor([[[1, 1, 0, 0, 0, 0]], [[0, 0, 1, 1, 0, 0]]])
ev2 = ParsingEvaluator(2)  # two labels: background and the one part
ev2.update({"person_parts": halves, "person_scores": torch.tensor([0.9, 0.8])},
           {"semantic": gt, "instances": (gt > 0).long(), "boxes": torch.zeros(1, 4), "meta": {"id": "halves"}})
g2 = ev2.compute()
display(Markdown(f"| | AP at t = 0.3 | AP at t = 0.5 |\n|---|---|---|\n"
                 f"| AP^r (many-to-one, 2 labels) | {g2['APr30']:.2f} | {g2['APr50']:.2f} |\n"
                 f"| AP^p (one-to-one, 2 labels) | {g2['APp30']:.2f} | {g2['APp50']:.2f} |"))

# %% [markdown]
# Each half has IoU 0.5 with the ground truth: both are true positives at $t < 0.5$, recall reaches 2 and AP^r is
# **2.0**; the one-to-one matching of AP^p counts the second half as a false positive. At $t = 0.5$ neither half
# passes, because the test is strict.
#
# ## What each metric rewards: controlled corruptions
#
# Now start from the ground truth written as a prediction — every person parsed perfectly, with distinct scores — and
# make one mistake at a time (`hparse.metrics.corruptions`):
#
# - **swap two people**: two people exchange their lower bodies. Every pixel keeps its label.
# - **erode a part**: one part of one person loses a 2-pixel rim.
# - **merge two people**: two people become one prediction (a grouping error of bottom-up parsers).
# - **drop a person**: a missed detection.
# - **add a false positive**: a ghost — a shifted copy of a real person — scored above everybody.
#
# Every corrupted prediction has its semantic map re-painted from the persons, as Parsing R-CNN builds it, so mIoU
# sees what the instance metrics see.

# %%
rng = np.random.default_rng(0)
perfect = [(prediction_from_target(s), s) for s in samples]
corrupted = {"perfect": perfect}
for name, corrupt in CORRUPTIONS.items():
    corrupted[name] = [(corrupt(pred, target, rng), target) for pred, target in perfect]
scores = {name: evaluate(pairs) for name, pairs in corrupted.items()}
KEYS = ["mIoU", "APp50", "APpvol", "PCP50", "APr50", "APrvol"]


def corruption_table(scores, keys=KEYS):
    base = scores["perfect"]
    head = "| prediction | " + " | ".join(keys) + " |\n|---" + "|---" * len(keys) + "|\n"
    rows = ["| perfect | " + " | ".join(pct(base[k]) for k in keys) + " |"]
    for name, r in scores.items():
        if name != "perfect":
            rows.append(f"| {name} | " + " | ".join(f"{pct(r[k])} ({100 * (r[k] - base[k]):+.1f})" for k in keys)
                        + " |")
    return head + "\n".join(rows)


display(Markdown(corruption_table(scores)))

# %% [markdown]
# One corruption per image, on every image of the split (values in %, change from the perfect prediction in
# brackets). The perfect prediction scores 100 on everything, except that AP^r can stay below 100 on a small split:
# `np.mean` over all 19 part classes gives 0 to any class that happens not to occur. Read the table column by column:
#
# - **mIoU** is blind to *who* a pixel belongs to: swapping and merging people leave it at 100. It moves only when
#   pixels change label (eroded rims, dropped people, a ghost painted over the background or over other people).
# - **AP^p** punishes every person-level error. A merge or a swap costs whole persons at high thresholds; a ghost
#   scored above everybody costs precision at the top of the ranking, which the VOC envelope propagates everywhere.
# - **PCP** ignores false positives by construction (it is a sum over true positives divided by the number of
#   persons), so the ghost leaves it unchanged unless it steals a match, while a dropped person costs exactly that
#   person's share.
# - **AP^r** sees regions: eroding one part moves it at high thresholds only; swapping lower bodies breaks the
#   regions of both people; a merge breaks every region it combines.
#
# The same numbers as bars:

# %%
fig, ax = plt.subplots(figsize=(9, 3.2))
names = [n for n in scores if n != "perfect"]
width = 0.8 / len(KEYS)
for k, key in enumerate(KEYS):
    deltas = [100 * (scores[n][key] - scores["perfect"][key]) for n in names]
    ax.bar(np.arange(len(names)) + k * width, deltas, width, label=key)
ax.set_xticks(np.arange(len(names)) + width * (len(KEYS) - 1) / 2, names)
ax.axhline(0, color="k", lw=0.6)
ax.set_ylabel("change from perfect (points)")
ax.legend(ncol=6, fontsize=7, loc="lower left")
ax.set_title(f"One corruption per image, {len(samples)} SynthCrowd val images")
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Explorer
#
# Pick an image and a corruption: the left panel shows the ground-truth persons, the right one the predicted persons
# (painted by score, one colour per person), with that image's metrics below. Widgets need a live kernel; the static
# figure after the explorer shows one image under every corruption.

# %%
def person_view(pred_or_target, image):
    """Persons painted into one map (highest score on top), one colour per person."""
    if "person_parts" in pred_or_target:
        _, owner = painted_maps(paint_persons(person_pixels(pred_or_target["person_parts"]),
                                              pred_or_target["person_scores"]))
    else:
        owner = pred_or_target["instances"]
    return overlay_instances(image, owner, alpha=0.7)


def show_case(index, name, axes):
    pred, target = corrupted[name][index]
    image = target["image"]
    axes[0].imshow(person_view(target, image))
    axes[0].set_title("ground truth", fontsize=8)
    axes[1].imshow(person_view(pred, image))
    r = evaluate([(pred, target)])
    axes[1].set_title(f"{name}\nmIoU {pct(r['mIoU'])}  APp50 {pct(r['APp50'])}  PCP50 {pct(r['PCP50'])}",
                      fontsize=8)
    for ax in axes:
        ax.axis("off")


try:
    import ipywidgets as widgets

    from hparse.viz.widgets import figure_explorer

    choose = widgets.Dropdown(options=list(corrupted), value="swap two people", description="mistake")
    pick = widgets.IntSlider(value=0, min=0, max=len(samples) - 1, description="image", continuous_update=False)

    def draw_case(fig, index, name):
        axes = fig.subplots(1, 2)
        show_case(index, name, axes)
        fig.tight_layout()

    explorer = figure_explorer(draw_case, {"index": pick, "name": choose}, figsize=(6, 3.2))
except ImportError:  # the static figure below carries the chapter without widgets
    explorer = None
explorer

# %%
# Static companion of the explorer: image 0 under every corruption.
fig, axes = plt.subplots(1, len(corrupted) + 1, figsize=(2.2 * (len(corrupted) + 1), 2.6))
axes[0].imshow(person_view(samples[0], samples[0]["image"]))
axes[0].set_title("ground truth", fontsize=8)
for ax, name in zip(axes[1:], corrupted):
    pred, target = corrupted[name][0]
    ax.imshow(person_view(pred, target["image"]))
    r = evaluate([(pred, target)])
    ax.set_title(f"{name}\nmIoU {pct(r['mIoU'])} APp50 {pct(r['APp50'])}", fontsize=7)
for ax in axes:
    ax.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Which official script? The knobs that change the number
#
# The papers compared in this book used different scripts, and the scripts differ in small ways that move
# the numbers ({cite:p}`cihp2018`'s CIHP script versus the Oxford group's code used by {cite:p}`holistic2017`; Parsing
# R-CNN's AP^p versus the MHP script). `ParsingEvaluator` exposes each difference as an option; the defaults
# reproduce the numbers the papers report. Here are all five corruptions pooled into one "imperfect model"
# (each image keeps the corruption drawn for it in the order above), scored under each variant:

# %%
names = list(CORRUPTIONS)
mixed = [corrupted[names[i % len(names)]][i] for i in range(len(samples))]
# a few empty ground-truth persons exercise the MHP rule: annotate one person more than the image shows
mixed = [(p, {**t, "boxes": torch.cat([t["boxes"], torch.zeros(1, 4)])} if i % 3 == 0 else t)
         for i, (p, t) in enumerate(mixed)]
variants = {
    "defaults: Parsing R-CNN mIoU / AP^p, CIHP AP^r": {},
    "AP^r as the Oxford TVG code (uninterpolated, void ignored)": {"ap_style": "uninterpolated", "ignore_void": True},
    "the same, classes without GT skipped (nanmean)": {"ap_style": "uninterpolated", "ignore_void": True,
                                                      "class_mean": "nanmean"},
    "AP^r class mean np.nanmean (MG, QANet)": {"class_mean": "nanmean"},
    "AP^p as the MHP v2 script (empty GT persons skipped)": {"skip_empty_gt": True},
    "mIoU with absent classes as 0 (MG, QANet)": {"absent_class": "zero"},
}
variant_scores = {name: evaluate(mixed, **mode) for name, mode in variants.items()}
display(Markdown("| evaluator mode | " + " | ".join(KEYS) + " |\n|---" + "|---" * len(KEYS) + "|\n" + "\n".join(
    f"| {name} | " + " | ".join(pct(r[k]) for k in KEYS) + " |" for name, r in variant_scores.items())))

# %% [markdown]
# The TVG code divides by the number of ground-truth regions without a guard, so a part class that the split never
# annotates makes its AP 0/0 = NaN and the class mean NaN (shown as –); on a small split that happens easily, which
# is why the next row skips such classes. The CIHP script gives the same class AP 0 instead, so its mean is defined
# but lower. Skipping empty ground-truth persons (MHP) raises AP^p and PCP here because one image in three was given
# an annotated person without pixels, which the Parsing R-CNN rule counts as a miss.
#
# Report the mode with every number: `ParsingEvaluator.config()` returns it, and every results file of this book
# stores it beside the metrics.
#
# ## Scoring any method's output from disk
#
# `hparse evaluate --pred DIR --gt DIR --dataset cihp|mhp|synth` scores predictions stored as PNG files: hparse's own
# layout (semantic map, per-person part maps with MHP-style names, a scores file), the CIHP challenge submission
# (`global_parsing/` + `instance_parsing/`, mIoU and AP^r) or the MHP v2 submission (`results.txt` + `global_seg/` +
# `global_tag/`). `hparse.metrics.io.write_predictions` writes the first, which contains the second.
#
# ## How fast
#
# The benchmark `hparse bench metrics` scores 500 SynthCrowd images of 512×512 with 4–6 people on one CPU core:

# %%
record = find_results("bench/metrics", profiles=("gpu", "cpu", "smoke"))
if record is None:
    print("no benchmark result yet: run `HPARSE_PROFILE=cpu hparse bench metrics`")
else:
    m = record["metrics"]
    display(Markdown(
        f"| images | size | people / image | total (s) | ms / image | of which mIoU / AP^p / AP^r (ms) | "
        f"per-person IoUs: official-style loop vs one pass |\n|---|---|---|---|---|---|---|\n"
        f"| {m['images']} | {m['image_size']}² | {m['gt_persons_per_image']:.1f} | {m['seconds_total']:.1f} | "
        f"{m['ms_per_image']:.1f} | {m['ms_per_image_miou']:.1f} / {m['ms_per_image_app']:.1f} / "
        f"{m['ms_per_image_apr']:.1f} | {m['person_iou_speedup']:.1f}× faster |\n\n"
        f"Measured on {record['provenance']['device']} (profile `{record['profile']}`, "
        f"{record['provenance']['date']}). At that rate the 5000 CIHP validation images would take about "
        f"{5000 * m['ms_per_image'] / 1000:.0f} s (CIHP images are smaller, with fewer people)."))

# %% [markdown]
# ## Summary
#
# - mIoU measures pixel labels over the whole split and cannot see instance errors: swaps and merges are free.
# - AP^p measures persons: the mean part IoU includes background (lenient for small persons), matching is greedy
#   one-to-one by score without fallback, and the threshold is strict.
# - PCP measures the parts of *found* persons, padded with zeros for missed ones; false positives cost nothing.
# - AP^r measures part regions after painting persons by score; matching is many-to-one (recall can exceed 1), and
#   the class mean gives absent classes 0 (or NaN when a class is predicted but never annotated).
# - Scripts differ (VOC vs uninterpolated AP, `mean` vs `nanmean`, empty persons counted or not): report the mode.
#
# ## Exercises
#
# 1. Make the ghost's score the *lowest* of the image instead of the highest. Which metrics still move, and why does
#    the VOC envelope hide it?
# 2. Erode with `iterations=1, 2, 4` on the same person. At which threshold does the person stop being a true
#    positive for AP^p, and for AP^r?
# 3. Shrink every person (larger images, same people). Predict how AP^p of the "erode a part" corruption changes,
#    using the background term of the mean IoU, then check it.
# 4. Find a prediction for which AP^p at $t = 0.1$ is *raised* by adding a low-scored garbage person when the score
#    threshold is 0. (Hint: an unmatched ground-truth person and the background term.)
