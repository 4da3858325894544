# ---
# jupyter:
#   jupytext:
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # Real datasets: four formats, one contract
#
# The four methods of this book were trained and scored on four public datasets: **CIHP** {cite:p}`cihp2018`,
# **MHP v2.0** {cite:p}`mhp2018`, **PASCAL-Person-Part** {cite:p}`pascalpersonpart2014` and **DensePose-COCO**
# {cite:p}`densepose2018` (whose images and keypoints are COCO's {cite:p}`cocokeypoints2014`). Each stores "which part,
# which person" in its own way: one label map plus one person map per image, one file per person, a person list in a
# MATLAB file, or box-relative run-length-encoded masks in a json. Each also has its own part vocabulary, its own
# left/right pairs and its own keypoints.
#
# `hparse` reads every one of them from its **official on-disk layout** and returns the same data contract as
# SynthCrowd, so every model, metric and chapter works unchanged on the real data. This chapter puts the four side by
# side: their label sets, flip pairs and keypoints, how each stores instances, what the loaders decide where a format
# leaves room, and how `hparse data verify` finds broken files before a long training run does.
#
# No dataset is downloaded here. If you prepared one with `data_scripts/` (into `data/` or `$HPARSE_DATA`), the
# chapter reads it; otherwise it writes a small **fixture** in that dataset's exact layout from SynthCrowd images
# (`hparse data export` does the same from the command line) and reads that through the same loader.

# %%
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import scipy.io
import torch
from IPython.display import Markdown, display
from PIL import Image

from hparse.data import (
    CIHP,
    CIHP_LABELS,
    COCO17,
    DENSEPOSE_LABELS,
    MHP_V2_LABELS,
    MPII16,
    PASCAL_PERSON_PART_LABELS,
    PPP14,
    DensePoseCOCO,
    MHPv2,
    PascalPersonPart,
    SynthCrowd,
    write_cihp,
    write_densepose_coco,
    write_mhp,
    write_pascal_person_part,
)
from hparse.data.densepose_coco import decode_dp_masks, paste_dp_masks, synth_to_densepose
from hparse.data.mhp import coco17_to_mpii16
from hparse.data.pascal_person_part import read_pascal_part_persons, synth_to_pascal_person_part
from hparse.data.verify import DATA_ENV, find_data_root, verify_split
from hparse.engine import get_profile
from hparse.viz import draw_boxes, draw_keypoints, overlay_instances, overlay_semantic, show_sample, to_numpy_image

profile = get_profile()
num_fixture = 3 if profile.name == "smoke" else 8
print(f"profile: {profile.name}; fixtures of {num_fixture} images where real data is absent")

LOADERS = {"cihp": CIHP, "mhp": MHPv2, "ppp": PascalPersonPart, "densepose": DensePoseCOCO}
SPLITS = {"cihp": "val", "mhp": "val", "ppp": "val", "densepose": "minival2014"}

workdir = Path(tempfile.mkdtemp(prefix="hparse_real_datasets_"))
# Seed 6 starts with three partly overlapping people, which the figures below use.
synth = SynthCrowd(split="val", num_images=num_fixture, image_size=160, min_people=3, max_people=4, crowding=0.5,
                   seed=6)
synth_samples = [synth[i] for i in range(len(synth))]
WRITERS = {
    "cihp": lambda root: write_cihp(synth_samples, root, "val"),
    "mhp": lambda root: write_mhp(synth_samples, root, "val"),
    "ppp": lambda root: write_pascal_person_part([synth_to_pascal_person_part(synth, i) for i in range(len(synth))],
                                                 root, "val"),
    "densepose": lambda root: write_densepose_coco([synth_to_densepose(synth, i) for i in range(len(synth))], root,
                                                   "minival2014"),
}

roots, sources = {}, {}
for key in LOADERS:
    real = find_data_root(key)
    if real is not None:
        roots[key], sources[key] = real, "real data"
    else:
        roots[key], sources[key] = workdir / key, "SynthCrowd fixture"
        WRITERS[key](roots[key])
datasets = {key: LOADERS[key](roots[key], SPLITS[key]) for key in LOADERS}
for key, dataset in datasets.items():
    print(f"{dataset.name:20s} {sources[key]:20s} {len(dataset):6d} images   {roots[key]}")
print(f"(set ${DATA_ENV} or run data_scripts/ to read the real datasets here)")

# %% [markdown]
# ## The four datasets at a glance
#
# Published statistics (from the dataset pages and papers; not measured here):
#
# | | CIHP | MHP v2.0 | PASCAL-Person-Part | DensePose-COCO |
# |---|---|---|---|---|
# | images | 28,280 train / 5,000 val / 5,000 test | 15,403 train / 5,000 val / 5,000 test | 1,716 train / 1,817 test | 26,437 train2014 / 5,984 valminusminival / 1,508 minival |
# | persons | at least 2 per image, 3.4 on average | 2 to 26 per image | the VOC person objects | 39,210 / 7,297 / 2,243 annotated persons |
# | how instances are stored | one person-id PNG per image | one part PNG **per person** | person silhouettes in a MATLAB file | 14 box-relative RLE masks per person in a COCO json |
# | test labels | not released | not released | released | released |
#
# What the label sets in `hparse.data.labels` say about each, computed from the label sets themselves:

# %%
LABELS = {"CIHP": CIHP_LABELS, "MHP v2.0": MHP_V2_LABELS, "PASCAL-Person-Part": PASCAL_PERSON_PART_LABELS,
          "DensePose-COCO": DENSEPOSE_LABELS}
rows = ["| | " + " | ".join(LABELS) + " |", "|---" * (len(LABELS) + 1) + "|"]
rows.append("| labels incl. background | " + " | ".join(str(ls.num_classes) for ls in LABELS.values()) + " |")
rows.append("| left/right flip pairs | " + " | ".join(str(len(ls.flip_pairs)) for ls in LABELS.values()) + " |")
kp_note = {"CIHP": "none in the dataset (SynthCrowd draws COCO-17)", "PASCAL-Person-Part": "PPP-14 (not in the releases read here)"}
rows.append("| keypoints | " + " | ".join(kp_note.get(name, f"{ls.keypoints.name} ({ls.keypoints.num_keypoints})")
                                          for name, ls in LABELS.items()) + " |")
rows.append("| K returned by the loader | " + " | ".join(str(datasets[k][0]["keypoints"].shape[1]) for k in LOADERS) + " |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# ## Label sets, side by side
#
# The vocabularies differ in granularity. CIHP has 19 parts with whole arms and legs; MHP v2.0 has 58, splitting
# garments (t-shirt, polo-shirt, sweater, ...), hands, feet and shoe types and adding accessories; PASCAL-Person-Part
# merges everything into six body regions with no left or right; DensePose has 14 body-surface parts that split arms
# and legs into upper and lower halves but know nothing of clothing. The colours are the ones every figure of this
# book uses.

# %%
def label_table(ax, labels, title):
    for i, (name, colour) in enumerate(zip(labels.names, labels.palette)):
        ax.add_patch(plt.Rectangle((0, -i - 0.4), 0.9, 0.8, color=colour / 255.0, ec="0.6", lw=0.4))
        ax.text(1.2, -i, f"{i:2d} {name}", va="center", fontsize=6.5, family="monospace")
    ax.set_xlim(0, 9)
    ax.set_ylim(-MHP_V2_LABELS.num_classes + 0.4, 1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


fig, axes = plt.subplots(1, 4, figsize=(14, 9.5))
for ax, (name, labels) in zip(axes, LABELS.items()):
    label_table(ax, labels, f"{name} ({labels.num_classes})")
fig.tight_layout()

# %% [markdown]
# ## Flip pairs
#
# A horizontal flip turns a left arm into something that looks like a right arm, so flip augmentation and flip
# testing must swap these label values (and the matching keypoints); `hparse.data.transforms.hflip_sample` does it
# from the label set. PASCAL-Person-Part has nothing to swap.

# %%
def pairs_text(names, pairs):
    return "<br>".join(f"{names[a]} ↔ {names[b]}" for a, b in pairs) or "(none)"


rows = ["| | part labels | keypoints |", "|---|---|---|"]
for name, labels in LABELS.items():
    kps = labels.keypoints if name not in ("CIHP", "PASCAL-Person-Part") else None
    kp_text = pairs_text(kps.names, kps.flip_pairs) if kps is not None else "-"
    rows.append(f"| {name} | {pairs_text(labels.names, labels.flip_pairs)} | {kp_text} |")
rows.append(f"| (PPP-14 joints) | | {pairs_text(PPP14.names, PPP14.flip_pairs)} |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# ## Keypoint sets
#
# Three joint conventions meet here. DensePose-COCO carries COCO's 17 keypoints; MHP v2.0 annotates 16 joints in
# **MPII order** (right ankle first, with pelvis, thorax, upper neck and head top, which COCO lacks); PASCAL-Person-Part
# has 14 joints from a later pose annotation that is not part of the releases read here. To write SynthCrowd (COCO-17)
# in the MHP layout, `hparse` converts COCO-17 to MPII-16: the twelve limb joints are copied, pelvis and thorax are the
# midpoints of the hips and shoulders, and upper neck and head top are marked absent.

# %% [markdown]
# ```{literalinclude} ../hparse/data/mhp.py
# :pyobject: coco17_to_mpii16
# ```

# %%
# The person with the most joints inside the image, shown in both conventions.
sample = synth_samples[0]
k = int(sample["keypoints"][..., 2].gt(0).sum(1).argmax())
coco = sample["keypoints"][k: k + 1]
mpii = coco17_to_mpii16(coco)
present = coco[0, :, 2] > 0
x1, y1 = coco[0, present, :2].min(0).values.tolist()
x2, y2 = coco[0, present, :2].max(0).values.tolist()
pad = 12
fig, axes = plt.subplots(1, 2, figsize=(8, 5))
for ax, kps, kset in ((axes[0], coco.numpy(), COCO17), (axes[1], mpii, MPII16)):
    ax.imshow(to_numpy_image(sample["image"]))
    draw_keypoints(ax, kps, kset, markersize=4)
    for j, (x, y, v) in enumerate(kps[0]):
        if v > 0:
            ax.text(x + 1, y, kset.names[j], fontsize=5.5, color="white",
                    bbox=dict(facecolor="black", alpha=0.5, pad=0.5, edgecolor="none"))
    ax.set_xlim(x1 - pad, x2 + pad)
    ax.set_ylim(y2 + pad, y1 - pad)
    ax.set_title(f"{kset.name}: {int((kps[0, :, 2] > 0).sum())} of {kset.num_keypoints} joints present", fontsize=9)
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# ## CIHP: one label map and one person map per image
#
# CIHP's archive holds, per split folder (`Training/`, `Validation/`), the images, `Category_ids` (part labels 0..19),
# `Human_ids` (person 1..N) and `Instance_ids` (one id per (person, part) region), plus colour visualisations. The
# loader's `root` is the `instance-level_human_parsing` folder:

# %%
def tree(root, depth=3, files_shown=2, prefix=""):
    entries = sorted(root.iterdir())
    folders, files = [p for p in entries if p.is_dir()], [p for p in entries if p.is_file()]
    for f in files[:files_shown]:
        print(f"{prefix}{f.name}")
    if len(files) > files_shown:
        print(f"{prefix}... ({len(files)} files)")
    for d in folders:
        print(f"{prefix}{d.name}/")
        if depth > 1:
            tree(d, depth - 1, files_shown, prefix + "    ")


tree(roots["cihp"])

# %% [markdown]
# `Instance_ids` is redundant: its value is `20 * (human_id - 1) + category_id` on every part pixel, which the
# official AP^r evaluation relies on. An 8-bit PNG can hold that for 12 persons only. The loader does not need the
# file, but `hparse data verify` checks it pixel by pixel against the other two maps:

# %% [markdown]
# ```{literalinclude} ../hparse/data/cihp.py
# :pyobject: instance_part_ids
# ```

# %%
cihp = datasets["cihp"]
image_id = cihp.ids[0]
maps = {kind: np.array(Image.open(cihp.label_path(kind, image_id))) for kind in ("Category_ids", "Human_ids",
                                                                                  "Instance_ids")}
fig, axes = plt.subplots(1, 4, figsize=(11, 3))
axes[0].imshow(np.array(Image.open(cihp.image_path(image_id))))
axes[1].imshow(CIHP_LABELS.colorize(maps["Category_ids"]))
axes[2].imshow(maps["Human_ids"], cmap="tab10", interpolation="nearest")
axes[3].imshow(maps["Instance_ids"], cmap="nipy_spectral", interpolation="nearest")
for ax, title in zip(axes, ["Images", "Category_ids", "Human_ids", "Instance_ids = 20 (h - 1) + c"]):
    ax.set_title(title, fontsize=9)
    ax.axis("off")
fig.tight_layout()
print(f"{image_id}: Instance_ids values {np.unique(maps['Instance_ids'])[1:].tolist()}")

# %% [markdown]
# ## MHP v2.0: one file per person
#
# MHP v2.0 stores each person's parts in its own PNG, `parsing_annos/<id>_<NN>_<KK>.png` (person `KK` of `NN`, the
# label in the red channel), and the 16 joints of all persons in `pose_annos/<id>.mat`. Persons may overlap, while
# the contract has one part label and one person per pixel, so the loader has to choose: it paints persons in file
# order, **later on top** (the rule Parsing R-CNN uses to paint predictions and the rule of DensePose pasting), and
# takes each person's box from its *own* file, so occlusion does not shrink it.

# %%
tree(roots["mhp"])

# %%
mhp = datasets["mhp"]
image_id = mhp.ids[0]
person_paths = mhp.person_paths(image_id)
mhp_sample = mhp[0]
fig, axes = plt.subplots(1, len(person_paths) + 1, figsize=(2.6 * (len(person_paths) + 1), 2.9))
for ax, (_, path) in zip(axes, person_paths):
    ax.imshow(MHP_V2_LABELS.colorize(np.array(Image.open(path))[..., 0]))
    ax.set_title(path.name, fontsize=8)
axes[-1].imshow(overlay_instances(mhp_sample["image"], mhp_sample["instances"], alpha=0.85))
draw_boxes(axes[-1], mhp_sample["boxes"])
axes[-1].set_title("painted persons, own boxes", fontsize=8)
for ax in axes:
    ax.axis("off")
fig.tight_layout()

pose = scipy.io.loadmat(mhp.pose_path(image_id))
raw = pose["person_0"]
print(f"{mhp.pose_path(image_id).name}: keys {sorted(k for k in pose if k.startswith('person_'))}")
print("joint           raw (x, y, flag)        contract (x, y, v = 2 - flag)")
for j in (0, 6, 8, 12):
    print(f"{MPII16.names[j]:15s} {str(np.round(raw[j], 1).tolist()):24s} {mhp_sample['keypoints'][0, j].tolist()}")

# %% [markdown]
# The flag in the `.mat` is 0 visible, 1 occluded, 2 out of image, so the contract's visibility is `2 - flag`; a
# joint the annotation tool left at (-1, -1) is absent. SynthCrowd's CIHP labels become MHP labels through a
# one-to-one name mapping (`hparse.data.mhp.CIHP_TO_MHP_V2`) that maps left/right pairs onto left/right pairs.

# %% [markdown]
# ## PASCAL-Person-Part: parts from one release, persons from another
#
# The benchmark's part labels come from the DeepLab release (six merged parts per pixel, plus the split lists), but
# that release has no person instances. The loader takes the persons from the Pascal-Part annotations the six parts
# were merged from: every `person` object of `Annotations_Part/<id>.mat` is one human, with its silhouette mask. It
# then checks that every part pixel lies on some person's silhouette (an error by default; `unassigned="ignore"` turns
# such pixels into 255). Images come from VOC2010.

# %%
tree(roots["ppp"])

# %%
ppp = datasets["ppp"]
image_id = ppp.ids[0]
ppp_sample = ppp[0]
height, width = ppp_sample["semantic"].shape
silhouettes = read_pascal_part_persons(ppp.annotation_path(image_id), (height, width), ppp.image_path(image_id))
fig, axes = plt.subplots(1, 2 + len(silhouettes), figsize=(2.6 * (2 + len(silhouettes)), 2.9))
axes[0].imshow(PASCAL_PERSON_PART_LABELS.colorize(np.array(Image.open(ppp.label_path(image_id)))))
axes[0].set_title("pascal_person_part_gt", fontsize=8)
for ax, (k, mask) in zip(axes[1:], enumerate(silhouettes, start=1)):
    ax.imshow(mask, cmap="gray")
    ax.set_title(f"Annotations_Part: person {k}", fontsize=8)
axes[-1].imshow(overlay_instances(ppp_sample["image"], ppp_sample["instances"], alpha=0.85))
axes[-1].set_title("instances", fontsize=8)
for ax in axes:
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# ## DensePose-COCO: parts in the box frame
#
# DensePose stores each annotated person's 14 coarse parts as 14 run-length-encoded masks of a **256 x 256 grid
# spanning the person's box**, entry `i` being part `i + 1`. To get an image-level part map the loader pastes them as
# the MG-HumanParsing code builds its parsing ground truth: truncate the box to whole pixels, clip it to the image,
# resize the grid into it with nearest neighbour (squeezing it when the box was clipped), paste the nonzero pixels,
# persons in annotation order with later ones on top. The boxes of the contract are the annotations' boxes; COCO
# persons without DensePose annotation are not persons here.

# %% [markdown]
# ```{literalinclude} ../hparse/data/densepose_coco.py
# :pyobject: paste_dp_masks
# ```

# %%
dp = datasets["densepose"]
image_id = dp.ids[0]
ann = max((a for a in dp.annotations[image_id] if a.get("dp_masks")), key=lambda a: a["bbox"][2] * a["bbox"][3])
grid = decode_dp_masks(ann["dp_masks"], f"annotation {ann['id']}", dp.annotation_path)
dp_sample = dp[0]
patch, (px, py) = paste_dp_masks(grid, ann["bbox"], tuple(dp_sample["semantic"].shape))
fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
axes[0].imshow(DENSEPOSE_LABELS.colorize(grid))
axes[0].set_title("dp_masks: 256 x 256 box frame", fontsize=8)
axes[1].imshow(DENSEPOSE_LABELS.colorize(patch))
axes[1].set_title(f"resized into the box ({patch.shape[1]} x {patch.shape[0]} px)", fontsize=8)
axes[2].imshow(overlay_semantic(dp_sample["image"], dp_sample["semantic"], DENSEPOSE_LABELS, alpha=0.85))
draw_boxes(axes[2], dp_sample["boxes"])
axes[2].set_title("all persons pasted; annotation boxes", fontsize=8)
for ax in axes:
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# ## One contract out of four formats
#
# Whatever the layout, each loader returns the same fields. Below, the first image of each dataset as the loaders
# return it: image with boxes and keypoints, part labels, persons.

# %%
fig, axes = plt.subplots(len(datasets), 3, figsize=(9, 3.1 * len(datasets)))
for row, dataset in zip(axes, datasets.values()):
    s = dataset[0]
    if s["keypoints"].shape[1] == 0 and dataset.labels.keypoints is not None:
        # K = 0 (no keypoints in the dataset): draw all-absent joints of the label set's convention instead.
        s = {**s, "keypoints": torch.zeros(len(s["boxes"]), dataset.labels.keypoints.num_keypoints, 3)}
    show_sample(s, dataset.labels, axes=row)
    height, width = s["semantic"].shape
    row[0].set_xlim(-0.5, width - 0.5)
    row[0].set_ylim(height - 0.5, -0.5)
    row[0].set_ylabel(dataset.name, fontsize=9)
    row[0].axis("on")
    row[0].set_xticks([])
    row[0].set_yticks([])
    row[0].set_title(f"{dataset.name}: image, boxes, keypoints", fontsize=9)
fig.tight_layout()

# %%
for dataset in datasets.values():
    s = dataset[0]
    print(f"{dataset.name:20s} image {tuple(s['image'].shape)}  persons {len(s['boxes'])}  keypoints "
          f"{tuple(s['keypoints'].shape)}  part labels {sorted(set(s['semantic'].unique().tolist()) - {0})}")

# %% [markdown]
# ## Finding broken files before training does
#
# A loader stops at the first broken file it meets, which may be hours into training. `hparse data verify` loads
# **every** image with every check - files present and decodable, label maps the size of their images, label values
# inside the label set, person files and pose entries agreeing, CIHP's `Instance_ids` consistent - and lists every
# problem, naming the file; its exit status is non-zero if there is any. Here we damage a copy of a CIHP fixture in
# three ways and verify it (never the real data):

# %%
broken = workdir / "cihp_broken"
write_cihp(synth_samples, broken, "val")
ids = (broken / "Validation" / "val_id.txt").read_text().split()
(broken / "Validation" / "Images" / f"{ids[0]}.jpg").unlink()
Image.fromarray(np.full((40, 40), 3, np.uint8)).save(broken / "Validation" / "Category_ids" / f"{ids[1]}.png")
inst_path = broken / "Validation" / "Instance_ids" / f"{ids[-1]}.png"
inst = np.array(Image.open(inst_path))
inst[inst > 0] += 1
Image.fromarray(inst).save(inst_path)

report = verify_split("cihp", broken, "val")
print(report.summary())
for line in report.problems:
    print(" ", line.replace(str(workdir), "<tmp>"))

# %% [markdown]
# From the command line: `hparse data verify --dataset cihp --root data/CIHP/instance-level_human_parsing` (every
# labelled split; `--split`, `--limit` and `--workers` narrow or spread it). The scripts in `data_scripts/` run it after
# unpacking; `data_scripts/README.md` lists each dataset's source, published sizes, terms and expected tree.

# %%
shutil.rmtree(workdir, ignore_errors=True)

# %% [markdown]
# ## Summary
#
# - CIHP stores one part map and one person map per image; MHP v2.0 one part map per person plus MPII-16 joints;
#   PASCAL-Person-Part combines the DeepLab part release with Pascal-Part person silhouettes; DensePose-COCO stores 14
#   box-relative RLE masks per person with COCO-17 keypoints.
# - The loaders read these layouts directly and return one data contract; where a format leaves room (overlapping
#   persons, boxes, gaps in person ids, parts outside silhouettes, clipped boxes) the choice is written in the
#   loader's docstring.
# - Label sets differ in granularity, left/right pairs and keypoints; the flip pairs drive augmentation and flip
#   testing.
# - `hparse data verify` checks a whole dataset up front and lists every problem; `hparse data export` writes
#   SynthCrowd in each layout, which is how the loaders are tested.
#
# ## Exercises
#
# 1. MHP persons may overlap. Change the painting order to "earlier on top" in a copy of `MHPv2.load` and measure, on
#    a SynthCrowd export with `crowding=1.0`, how many pixels change owner. Which order matches the official AP^p
#    evaluation, which uses the per-person files directly?
# 2. The CIHP-to-MHP mapping sends "Upper-clothes" to "other-upper-body-clothes". Which MHP labels would a model
#    trained on MHP and evaluated on CIHP have to merge back? Write the inverse, many-to-one mapping.
# 3. DensePose boxes wider than 256 pixels are downsampled into the 256 x 256 grid. Export a SynthCrowd image of size
#    512 with `write_densepose_coco`, reload it, and count the pixels that change label.
# 4. Damage a fixture in a way `hparse data verify` does not catch. What check would catch it, and what would it
#    cost per image?
