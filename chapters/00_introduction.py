# ---
# jupyter:
#   jupytext:
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # Instance-level human parsing
#
# *Human parsing* assigns every pixel of a person to a semantic part: hair, face, upper clothes, left arm, right
# shoe... *Instance-level* human parsing adds the question a crowd makes hard: **which person does this part belong
# to?** The answer must come for every person in the image at once, including people who overlap, who are cut off by
# the image border, and who are small in the background.
#
# This book reproduces four published methods that answer that question in four different ways, component by
# component, in one small PyTorch package, `hparse`:
#
# | method | family | how parts find their person | learned end to end | in hparse today |
# |---|---|---|---|---|
# | Parsing R-CNN {cite:p}`parsingrcnn2019` | top-down | detect each person, then parse inside its box (RoI) | detector + parsing branch | the model, every component a flag, trained (chapters 03-05) |
# | RoI attention framework {cite:p}`roiattention2019` | top-down | as above, plus a foreground-attention map that tells the parsing branch which pixels of an overlapping box belong to *this* person | detector + attention + parsing | the model, every fusion of Table 5, trained (chapter 06) |
# | Holistic instance-level parsing {cite:p}`holistic2017` | segment, then assign | category-level part segmentation of the whole image; an **Instance CRF** over the detections assigns each pixel a (person, part) label | segmentation + CRF (unrolled mean-field), with a permutation-invariant loss | the model (FCN with pyramid pooling, detections, the Instance CRF with each term a flag, matched loss, OHEM, piecewise or end-to-end training), Table 1 trained (chapter 07) |
# | Multi-granularity bottom-up parser {cite:p}`mgparsing2021` | bottom-up | every body pixel points to its person's nearest joint (a dense-to-sparse projection field); joints are grouped into people by **differentiable bipartite matching** | parsing + projection field + keypoints + matching | the model with its assembly and oracle (chapter 08), trained in the paper's two steps, the second through the differentiable matching (chapter 09) |
#
# Top-down methods inherit the detector's strengths (each person handled separately, at a resolution fitted to its
# size) and its weakness (a missed or merged box loses a person; a box holds pieces of its neighbours). Bottom-up
# methods see the whole image once and group afterwards, so their cost does not grow with the number of people, but
# grouping is where they fail. The chapters make each trade-off visible.

# %% [markdown]
# ## Three granularities of one image
#
# One annotation answers three questions, and the metrics of {doc}`02_metrics` score each of them:
#
# - **semantic parts** (category level): the part label of every pixel, whoever it belongs to — scored by mIoU;
# - **human instances**: which pixels form person 1, person 2, ... — the grouping;
# - **person parts** (instance level): the part map of each person — scored by AP^p (a person is found when the mean
#   part IoU with a ground-truth person passes a threshold) and AP^r (each (person, part) region is an instance).
#
# In `hparse` every dataset returns one dictionary per image with exactly these fields (the *data contract*), and a
# person's part map is never stored twice: it is `semantic * (instances == k)`.
#
# The scene below comes from **SynthCrowd**, the procedural dataset of {doc}`01_data`, which lets every chapter run
# offline and in seconds.

# %%
import matplotlib.pyplot as plt
import torch

from hparse.data import SynthCrowd
from hparse.data.contract import person_part_maps
from hparse.engine import get_profile
from hparse.viz import overlay_instances, overlay_semantic, to_numpy_image

profile = get_profile()
print(f"profile: {profile.name} (set HPARSE_PROFILE=smoke|cpu|gpu)")

dataset = SynthCrowd(split="val", num_images=8, image_size=256, min_people=3, max_people=4, crowding=0.6, seed=0)
sample = dataset[0]
labels = dataset.labels
parts = person_part_maps(sample["semantic"], sample["instances"])

fig, axes = plt.subplots(1, 3 + len(parts), figsize=(2.6 * (3 + len(parts)), 2.8))
axes[0].imshow(to_numpy_image(sample["image"]))
axes[0].set_title("image")
axes[1].imshow(overlay_semantic(sample["image"], sample["semantic"], labels, alpha=0.9))
axes[1].set_title("semantic parts")
axes[2].imshow(overlay_instances(sample["image"], sample["instances"], alpha=0.9))
axes[2].set_title("human instances")
for k, person in enumerate(parts):
    axes[3 + k].imshow(overlay_semantic(sample["image"], person, labels, alpha=0.9))
    axes[3 + k].set_title(f"person {k + 1}: parts")
for ax in axes:
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# The data contract, field by field, for this image:

# %%
for key, value in sample.items():
    if isinstance(value, torch.Tensor):
        print(f"{key:10s} {str(value.dtype):14s} {tuple(value.shape)}")
    else:
        print(f"{key:10s} {value}")

# %% [markdown]
# ## The label set
#
# SynthCrowd draws on the 20 labels of CIHP {cite:p}`cihp2018` (label 0 is background). Left and right are the
# person's own: a horizontal flip must swap them, which is why every label set carries its flip pairs.

# %%
fig, ax = plt.subplots(figsize=(8, 2.2))
ax.imshow(labels.palette[None], aspect="auto")
ax.set_xticks(range(labels.num_classes))
ax.set_xticklabels(labels.names, rotation=60, ha="right", fontsize=8)
ax.set_yticks([])
ax.set_title(f"{labels.name}: {labels.num_classes} labels; flip pairs {labels.flip_pairs}", fontsize=9)
fig.tight_layout()

# %% [markdown]
# ## How to read and run this book
#
# - Every chapter imports its code from `hparse`; the book never re-implements the package in a cell. Where the code
#   *is* the lesson, the chapter shows the package's own source.
# - Every chapter runs top to bottom in three sizes, chosen by the environment variable `HPARSE_PROFILE`:
#   `smoke` (seconds; what continuous integration builds), `cpu` (minutes on a laptop) and `gpu` (the real runs). The
#   code path is the same; only the sizes change.
# - Numbers called *ours* come from files in `results/`, written by real runs together with their provenance (git
#   commit, device, library versions, wall time, date). Numbers from the papers are labelled with their table.
#
# ## Summary
#
# - Instance-level human parsing = part segmentation + person assignment, for every person at once.
# - Top-down methods parse inside detected boxes; bottom-up methods parse the whole image and group afterwards.
# - One data contract (`image`, `semantic`, `instances`, `boxes`, `keypoints`, `meta`) serves every dataset and method.
#
# ## Exercises
#
# 1. Which of the three granularities can a method that predicts only `semantic` be scored on? Which metric would
#    reward a method that finds every person but confuses left and right arms?
# 2. Using `person_part_maps`, check that the per-person maps of the sample above add up to the semantic map on the
#    foreground.
