# ---
# jupyter:
#   jupytext:
#     text_representation: {extension: .py, format_name: percent}
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # The Instance CRF: from part segmentation to parsed people
#
# A semantic part segmentation says *what* each pixel is (a face, a sleeve, a shoe) but not *whose* it is. The
# holistic parser of Li, Arnab and Torr {cite:p}`holistic2017` gets the "whose" from a person detector and settles
# it with a conditional random field over the whole image, the **Instance CRF** (§3.2). Its inputs are
#
# - the category-level part probabilities $Q_k(j)$, $j = 0..P$ (0 = background), at every pixel $k$;
# - $D$ person detections: boxes $B_i$ with scores $s_i \in [0, 1]$.
#
# Every pixel takes one label from $\{(0,0)\} \cup \{1..D\}\times\{1..P\}$: background, or *part $j$ of
# detection $i$*. The label set grows and shrinks with $D$, so no CRF parameter can belong to a label; the paper
# keeps one scalar weight per term (§3.2). The energy is (Eq. 1)
#
# $$
# E(v) = -\sum_k \ln\big[w_\text{box}\,\psi^\text{Box}_k(v_k) + w_\text{global}\,\psi^\text{Global}_k(v_k) + \varepsilon\big]
#        + \sum_{k<m} \psi^\text{Pairwise}(v_k, v_m),
# $$
#
# - **box term** (Eq. 2): $\psi^\text{Box}_k(i,j) = s_i\,Q_k(j)$ if pixel $k$ lies in box $i$, else 0. A detection
#   claims the parts inside its box, in proportion to its confidence and the part evidence;
# - **global term** (Eq. 3): $\psi^\text{Global}_k(i,j) = Q_k(j)$ for every detection, and $Q_k(0)$ for the
#   background. It gives pixels *outside* every box a way to join a person, so a box that cuts a person short does
#   not cut the mask short (the paper's Fig. 4, first row);
# - **pairwise term** (§3.2.3): the dense Gaussian kernels of {cite:p}`densecrf2011` with a Potts compatibility, an
#   appearance kernel (close and similar in colour) and a smoothness kernel (close).
#
# Mean-field inference, unrolled for a few iterations, turns the energy into a differentiable layer, so the CRF
# trains with the network behind it. This chapter builds the CRF from `hparse.ops.instance_crf`, looks at its
# unaries, steps through mean-field, checks the two robustness claims of Fig. 4 (truncated boxes, false
# positives), learns the four weights with the paper's permutation-invariant loss (§3.3), and ablates the three
# terms over SynthCrowd's crowding sweep.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

from hparse.benchmarks.instance_crf import simulated_inputs
from hparse.data import CIHP_LABELS, SynthCrowd
from hparse.engine import find_results, get_device, get_profile, seed_everything
from hparse.engine.results import load_result
from hparse.experiments.holistic_table1 import PAPER_TABLE1, RECORD_PREFIX, ROWS, TABLE_KEYS, table
from hparse.experiments.runner import spread_verdict
from hparse.metrics import ParsingEvaluator
from hparse.models import build_model
from hparse.ops import InstanceCRF, crf_prediction, hungarian_matched_loss, instance_crf
from hparse.ops.instance_crf import (
    boxes_to_masks,
    crf_channel,
    crf_instances,
    default_pairwise_weights,
    instance_unary,
    pairwise_messages,
)
from hparse.recipes import recipe
from hparse.viz import overlay_instances, overlay_semantic, to_numpy_image
from hparse.viz.overlay import draw_boxes
from hparse.viz.widgets import slider_explorer, static_strip

profile = get_profile()
device = get_device()
seed_everything(0)
torch.set_num_threads(min(torch.get_num_threads(), 4))
SIZE = profile.image_size
P = CIHP_LABELS.num_classes - 1  # 19 part classes; Q has P + 1 = 20 channels
MEAN_FIELD_STEPS = 8  # iterations shown by the explorer
SWEEP_IMAGES = {"smoke": 2, "cpu": 10, "gpu": 60}[profile.name]
CROWDING = (0.0, 0.5, 1.0) if profile.name == "smoke" else (0.0, 0.25, 0.5, 0.75, 1.0)
TRAIN_STEPS = {"smoke": 3, "cpu": 25, "gpu": 300}[profile.name]
print(f"profile {profile.name} on {device}: images {SIZE}px, {P} parts; sweep {len(CROWDING)} crowding levels x "
      f"{SWEEP_IMAGES} images; {TRAIN_STEPS} training steps")

# %% [markdown]
# ## Inputs without a trained network
#
# The CRF needs part probabilities and detections. To study it on its own we make both from SynthCrowd's ground
# truth with `simulated_inputs`: the one-hot part map is blurred (soft edges), spatially smooth noise is added to
# the logits (so $Q$ is wrong in blobs, as a network is), and the boxes are jittered by 8% of their size. Two
# detector failures of the paper's Fig. 4 are staged on purpose: **one box is truncated** to the top 55% of its
# person, and **one false positive** (score 0.9) sits on the emptiest patch of background.

# %%
candidates = SynthCrowd(split="val", num_images=12, image_size=SIZE, min_people=3, max_people=max(3, profile.max_people),
                        crowding=0.5, seed=0)


def largest_person_area(sample):
    ids, counts = torch.unique(sample["instances"][sample["instances"] > 0], return_counts=True)
    return int(counts.max()) if len(counts) else 0


index = max(range(len(candidates)), key=lambda i: largest_person_area(candidates[i]))
sample = candidates[index]
areas = torch.bincount(sample["instances"].flatten(), minlength=len(sample["boxes"]) + 1)[1:]
TRUNC = int(areas.argmax())  # the largest person gets the truncated box
inputs = simulated_inputs(sample, P + 1, truncate=(TRUNC, 0.55), false_positive=0.9, seed=index)
Q, boxes, scores, image = inputs["Q"], inputs["boxes"], inputs["scores"], sample["image"]
FP = inputs["false_positive"]
D = len(boxes)
print(f"val image {index}: {len(sample['boxes'])} people, D = {D} detections (box {TRUNC + 1} truncated, "
      f"box {FP + 1} a false positive); CRF labels: 1 + D*P = {1 + D * P}")
print("scores:", [round(float(s), 2) for s in scores])

fig, axes = plt.subplots(1, 3, figsize=(11, 3.9))
axes[0].imshow(overlay_instances(image, sample["instances"]))
axes[0].set_title("ground truth people")
axes[1].imshow(overlay_semantic(image, Q.argmax(0), CIHP_LABELS))
axes[1].set_title("simulated Q (arg-max)")
axes[2].imshow(to_numpy_image(image))
draw_boxes(axes[2], boxes, labels=[f"{i + 1}: {float(s):.2f}" for i, s in enumerate(scores)])
axes[2].set_title("detections (id: score)")
for ax in axes:
    ax.axis("off")
fig.tight_layout()
semantic_acc = float((Q.argmax(0) == sample["semantic"]).float().mean())
print(f"pixel accuracy of the simulated Q: {semantic_acc:.3f}")

# %% [markdown]
# ## The unary potentials
#
# The package computes both unary terms at once. The per-detection multiplier of $Q_k(j)$ is
# $w_\text{box}\, s_i\,[k \in B_i] + w_\text{global}$, so all $D \times P$ channels come from one broadcast:

# %% [markdown]
# ```{literalinclude} ../hparse/ops/instance_crf/potentials.py
# :pyobject: unary_potential
# ```
#
# Below, for the part the truncated person shows most, are the potentials $e^{-U}$ of the background and of that
# part for every detection. Inside a box the label gets $(w_\text{box} s_i + w_\text{global})\,Q_k(j)$, outside
# only $w_\text{global} Q_k(j)$, the same for every detection: outside all boxes the unaries cannot tell the
# detections apart. The last panel labels each pixel by its best unary alone (mean-field iteration 0).

# %%
U = instance_unary(Q, boxes, scores, image=image)
truncated_parts = sample["semantic"][sample["instances"] == TRUNC + 1]
PART = int(torch.bincount(truncated_parts, minlength=P + 1)[1:].argmax()) + 1
panels = [("background (0, 0)", U[0])] + [(f"({i + 1}, {CIHP_LABELS.names[PART]})", U[crf_channel(i + 1, PART, P)])
                                          for i in range(D)]
fig, axes = plt.subplots(1, len(panels) + 1, figsize=(2.4 * (len(panels) + 1), 2.8))
vmax = float(torch.exp(-U).max())
for ax, (title, u) in zip(axes, panels):
    ax.imshow(torch.exp(-u).numpy(), vmin=0, vmax=vmax, cmap="magma")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
unary_labels = crf_instances(U.argmin(0), P)
axes[-1].imshow(overlay_instances(image, unary_labels))
draw_boxes(axes[-1], boxes)
axes[-1].set_title("arg-min U (person id)", fontsize=8)
axes[-1].axis("off")
fig.tight_layout()

# %% [markdown]
# ## Mean-field inference, step by step
#
# Mean-field starts from $Q^0 = \operatorname{softmax}(-U)$ and repeats
#
# $$
# Q_k(l) \leftarrow \operatorname{softmax}_l\Big(-U_k(l) + \sum_{m \ne k} \big[w_\text{app}\,k_\text{app}(k,m)
# + w_\text{smooth}\,k_\text{smooth}(k,m)\big]\, Q_m(l)\Big),
# $$
#
# $k_\text{app} = \exp(-\lVert p_k-p_m\rVert^2/2\theta_\alpha^2 - \lVert I_k-I_m\rVert^2/2\theta_\beta^2)$,
# $k_\text{smooth} = \exp(-\lVert p_k-p_m\rVert^2/2\theta_\gamma^2)$. With a Potts compatibility a pixel is pulled
# towards the labels of its look-alike neighbours. Every label keeps its own messages: a pixel of *(person 2,
# face)* is supported only by nearby pixels that are also *(person 2, face)*. The widths $\theta_\alpha = 49$,
# $\theta_\beta = 5$, $\theta_\gamma = 3$ come from the authors' released Instance-CRF model. So do the weights 4
# and 3, which there multiply *normalised* kernels: each message is divided by the pixel's kernel mass
# $\sum_{m\ne k} k(k,m)$, i.e. it is a Gaussian-weighted average of the neighbours' $Q$. `hparse` does the same by
# default (`normalize=True`). Drag the slider to step through the iterations (live kernel only); the strip below
# shows the same steps for the static page.

# %%
w_app, w_smooth = default_pairwise_weights(normalize=True)
print(f"default pairwise weights (normalised kernels): w_app = {w_app:.3g}, w_smooth = {w_smooth:.3g}")
steps = [instance_crf(Q, boxes, scores, image, iters=t) for t in range(MEAN_FIELD_STEPS + 1)]
step_labels = [p.argmax(0) for p in steps]
changed = [0] + [int((step_labels[t] != step_labels[t - 1]).sum()) for t in range(1, len(steps))]


def render_step(t, ax):
    ax.imshow(overlay_instances(image, crf_instances(step_labels[t], P)))
    draw_boxes(ax, boxes)
    ax.set_title(f"iteration {t}: {changed[t]} pixels changed", fontsize=8)
    ax.axis("off")


slider_explorer(render_step, len(steps), description="iteration", figsize=(4.5, 4.5))

# %%
strip = static_strip(render_step, [0, 1, 2, MEAN_FIELD_STEPS // 2, MEAN_FIELD_STEPS])
print("pixels whose label changed at each iteration:", changed[1:])

# %% [markdown]
# Most changes come in the first iterations; the paper unrolls a fixed small number (the released model uses 3,
# `hparse` defaults to 5).
#
# **Why normalise.** The plain sum $\sum_{m\ne k} k(k,m)\,Q_m(l)$ grows with the number of look-alike neighbours a
# pixel has. Scaled so that it matches the released message in a uniform region reaching $\sim 3\theta_\alpha =
# 150$ px in every direction (weight $4 / (2\pi\theta_\alpha^2 - 1)$), it is only a few percent of it on an image
# this small: the appearance kernel all but vanishes and the pairwise term becomes pure smoothing. The total
# appearance message weight $w_\text{app}\sum_{m\ne k} k_\text{app}(k,m)$ each pixel of this image receives:

# %%
crop = image[:, :48, :48]  # the exact kernels are N x N: a 48 x 48 crop
ones = torch.ones(1, *crop.shape[1:])
mass = {}
for normalize in (True, False):
    w_a, _ = default_pairwise_weights(normalize)
    app_msg, _ = pairwise_messages(ones.double(), crop, method="exact", normalize=normalize)
    mass[normalize] = (w_a * app_msg[0]).float()
fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
for ax, (normalize, m) in zip(axes, mass.items()):
    im = ax.imshow(m.numpy(), cmap="viridis")
    ax.set_title(f"normalize={normalize}: median {float(m.median()):.3g}", fontsize=9)
    ax.axis("off")
    fig.colorbar(im, ax=ax, fraction=0.046)
fig.tight_layout()
print(f"unnormalised appearance message at the median pixel: {100 * float(mass[False].median() / 4.0):.1f}% of the "
      "released (normalised) one")

# %% [markdown]
#
# ## Fig. 4, first row: a truncated box
#
# The truncated detection's box stops at 55% of its person's height. With the **box term only**, pixels outside it
# have no potential towards any detection, so the background wins there and the mask is cut at the box edge: the
# failure the global term was introduced for (§3.2.2). With the **global term**, those pixels may join any
# detection; which one they join is decided by the pairwise term, whose messages carry a part label across the box
# edge, where that part straddles it.

# %%
VARIANTS = {
    "box only": dict(global_term=False, pairwise=False),
    "box + global": dict(pairwise=False),
    "box + global + pairwise": dict(),
}
outputs = {name: instance_crf(Q, boxes, scores, image, **kw) for name, kw in VARIANTS.items()}
person = sample["instances"] == TRUNC + 1
outside = person & ~boxes_to_masks(boxes[TRUNC : TRUNC + 1], SIZE, SIZE)[0]

rows = ["| variant | truncated person's pixels outside its box given to it | ... to another detection | "
        "... to background |", "|---|---|---|---|"]
fig, axes = plt.subplots(1, len(VARIANTS), figsize=(3.6 * len(VARIANTS), 3.8))
for ax, (name, prob) in zip(axes, outputs.items()):
    inst = crf_instances(prob.argmax(0), P)
    own = float((inst[outside] == TRUNC + 1).float().mean())
    other = float(((inst[outside] > 0) & (inst[outside] != TRUNC + 1)).float().mean())
    rows.append(f"| {name} | {100 * own:.1f}% | {100 * other:.1f}% | {100 * (1 - own - other):.1f}% |")
    ax.imshow(overlay_instances(image, inst))
    draw_boxes(ax, boxes[TRUNC : TRUNC + 1], colours=np.array([[255, 255, 255]]))
    ax.contour(outside.numpy(), levels=[0.5], colors="cyan", linewidths=0.8)
    ax.set_title(name, fontsize=9)
    ax.axis("off")
fig.suptitle(f"truncated box (white) of person {TRUNC + 1}; cyan: its {int(outside.sum())} pixels outside the box",
             fontsize=9)
fig.tight_layout()
display(Markdown("\n".join(rows)))

# %% [markdown]
# Outside every box, the global term gives all detections *the same* unary, an exact tie. Without pairwise
# messages, the arg-max breaks it by taking the first detection, which is why "box + global" hands the pixels
# below the box to detection 1. The pairwise term breaks the tie with evidence instead. A label (person, part)
# collects messages only from pixels that already carry that label, so a part that straddles the box edge (say,
# trousers cut by it) is continued outside it, while a part lying wholly outside the box gets no such help.
#
# ## Fig. 4, second row: a false positive
#
# The false detection sits on background, where $Q_k(j)$ of every part is small, so its box term is small too (the
# paper's argument below Eq. 2): it wins only pixels that the part segmentation already calls a person. The
# released post-processing then re-scores each detection by the mean probability of its pixels
# (`crf_prediction(..., rescore=True)`): a detection that wins no pixel scores 0, and one that wins a few stray
# pixels keeps only their (usually low) probability instead of its detector score.

# %%
rows = ["| variant | pixels won by the false positive | its score after re-scoring | "
        "smallest re-scored true detection |", "|---|---|---|---|"]
for name, prob in outputs.items():
    pred = crf_prediction(prob, P, scores, boxes, rescore=True)
    won = int((pred["instances"] == FP + 1).sum())
    true_scores = torch.cat([pred["person_scores"][:FP], pred["person_scores"][FP + 1 :]])
    rows.append(f"| {name} | {won} | {float(pred['person_scores'][FP]):.3f} | {float(true_scores.min()):.3f} |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# ## Exact and fast pairwise messages
#
# A dense CRF's messages sum over all $N^2$ pixel pairs. `method="exact"` builds both kernels as $N \times N$
# matrices, which is the reference but only fits small images (96×96 at most). `method="fast"` makes two changes.
# The smoothness kernel factorises into two 1-D Gaussians, i.e. two depthwise convolutions. For the appearance
# kernel, every pixel stays a query, while the other pixels are summarised as two Gaussian clouds per grid cell,
# split along the cell's main colour axis. The kernel between a pixel and a Gaussian cloud has a closed form that
# is a dot product of features, so all messages come from one `scaled_dot_product_attention` call. It never
# stores the $N \times N$ matrix and runs on the flash / memory-efficient kernels of a GPU:

# %% [markdown]
# ```{literalinclude} ../hparse/ops/instance_crf/kernels.py
# :pyobject: _FastMessages._app_incl
# ```
#
# The benchmark (`hparse bench instance_crf`) measures the error of the fast path against the exact one on a
# 64×64 SynthCrowd image for several grid strides, and the fast path's time at 512×512:

# %%
record = find_results("bench/instance_crf", profiles=("gpu", "cpu", "smoke"))
if record is None:
    display(Markdown("*No benchmark result yet: run `hparse bench instance_crf` to fill this table.*"))
else:
    small, large = record["metrics"]["small"], record["metrics"]["large"]
    lines = [f"Measured on {record['provenance']['device']} (profile `{record['profile']}`, "
             f"{record['provenance']['date'][:10]}); {small['size']}×{small['size']}, D = {small['num_detections']}, "
             f"P = {small['num_parts']}.", "",
             "| kernels | exact (s) | fast (s) | grid stride | max abs ΔQ | mean abs ΔQ | arg-max differs |",
             "|---|---|---|---|---|---|---|"]
    for form in ("unnormalized", "normalized"):
        for key, err in small[form]["error"].items():
            lines.append(f"| {form} | {small[form]['exact_s']:.3f} | {small[form]['fast_s']:.3f} | {key} | "
                         f"{err['max_abs']:.2g} | {err['mean_abs']:.2g} | {100 * err['argmax_disagree']:.2f}% |")
    lines += ["", f"Fast path at {large['size']}×{large['size']}, P = {large['num_parts']}, "
              f"{large['iters']} iterations:", "", "| D | labels | seconds | seconds / iteration |", "|---|---|---|---|"]
    for key, run in large["runs"].items():
        lines.append(f"| {key[1:]} | {run['labels']} | {run['fast_s']:.2f} | {run['per_iteration_s']:.2f} |")
    display(Markdown("\n".join(lines)))

# %% [markdown]
# A third path, `method="lattice"`, is the one of Krähenbühl & Koltun's own code (`pydensecrf`): the appearance
# kernel by the **permutohedral lattice** {cite:p}`adams2010permutohedral`. Pixels are lifted into the 5-d feature
# space (position / θα, colour / θβ), splatted onto the vertices of the simplex that holds them, blurred along the
# lattice's d + 1 directions and sliced back. In hparse the three steps are sparse matrices built once per image
# (`hparse.ops.instance_crf.lattice`), so each mean-field iteration is three sparse products, and their transposes
# give the gradient. The Instance CRF sums over $m \ne k$, so the pixel's own share of the filter is subtracted
# exactly. The benchmark times the three paths on the same problem as `pydensecrf` (a SynthCrowd image, D = 4
# detections, P = 20 parts, 81 labels, 5 iterations, the same unary and kernel widths), side by side in one run:

# %% tags=["hide-input"]
versus = (record or {}).get("metrics", {}).get("vs_densecrf")
if versus and versus.get("sizes"):
    lines = [f"Reference: {versus['densecrf']}. Error against `method=\"exact\"` at "
             f"{versus['error_vs_exact']['size']}×{versus['error_vs_exact']['size']}: lattice mean |ΔQ| "
             f"{versus['error_vs_exact']['lattice']['mean_abs']:.2g}, arg-max differs on "
             f"{100 * versus['error_vs_exact']['lattice']['argmax_disagree']:.2f}% of pixels (fast: "
             f"{versus['error_vs_exact']['fast']['mean_abs']:.2g}, "
             f"{100 * versus['error_vs_exact']['fast']['argmax_disagree']:.2f}%).", "",
             "| size | torch threads | lattice (s) | fast (s) | pydensecrf (s) | pydensecrf time / lattice time |",
             "|---|---|---|---|---|---|"]
    for size, row in versus["sizes"].items():
        for threads, t in row["threads"].items():
            dense = t.get("densecrf_s")
            lines.append(f"| {size}×{size} | {threads} | {t['lattice_s']:.2f} | {t['fast_s']:.2f} | "
                         + (f"{dense:.2f} | {t['speedup_lattice_vs_densecrf']:.2f}× |" if dense else "– | – |"))
    timings = [t for row in versus["sizes"].values() for t in row["threads"].values()]
    over_fast = [t["speedup_lattice_vs_fast"] for t in timings]
    over_dense = [t["speedup_lattice_vs_densecrf"] for t in timings if "speedup_lattice_vs_densecrf" in t]
    lines += ["", f"The lattice path is {min(over_fast):.1f}-{max(over_fast):.1f}× faster than the fast path"
              + (f"; `pydensecrf` takes {min(over_dense):.2f}-{max(over_dense):.2f}× the lattice path's time"
                 + (" (its lattice is hand-written C++; ours is sorts, sparse-matrix assembly and three sparse "
                    "products per filtering, and the breakdown below shows which part costs the difference)."
                    if max(over_dense) < 1 else ".")
                 if over_dense else "."),
              "", "Reproduce: `pip install -e \".[bench]\"` then `hparse bench instance_crf --profile cpu`."]
    parts = [(size, t["breakdown"]) for size, row in versus["sizes"].items()
             for threads, t in row["threads"].items() if threads == "1" and "densecrf_setup_s" in t.get("breakdown", {})]
    if parts:
        lines[-2:-2] = ["", "Where the time goes (one thread): " + "; ".join(
            f"{size}×{size}: building the lattice {1000 * b['lattice_build_s']:.0f} ms against pydensecrf's setup "
            f"{1000 * b['densecrf_setup_s']:.0f} ms, one mean-field iteration "
            f"{1000 * b['lattice_messages_per_iteration_s']:.0f} ms of messages against "
            f"{1000 * b['densecrf_inference_s'] / versus['iters']:.0f} ms per pydensecrf iteration"
            for size, b in parts) + "."]
    display(Markdown("\n".join(lines)))

# %% [markdown]
# The unnormalised form looks close to exact at every stride, but mostly because its appearance message is tiny
# (above). The normalised form (the default) divides by $\sum_{m\ne k} k(k,m)$. For a pixel whose colour is rare in
# the image, that sum is small and the message is an average over a handful of neighbours, so the few pixels
# where the cloud summary is off change visibly. Here is the same comparison, computed now on a 48×48 SynthCrowd
# image:

# %%
small = SynthCrowd(split="val", num_images=1, image_size=48, min_people=3, max_people=3, crowding=0.5, seed=1)[0]
small_inputs = simulated_inputs(small, P + 1, seed=1)
args = (small_inputs["Q"], small_inputs["boxes"], small_inputs["scores"], small["image"])
for normalize in (False, True):
    start = time.perf_counter()
    exact = instance_crf(*args, method="exact", normalize=normalize)
    t_exact = time.perf_counter() - start
    start = time.perf_counter()
    fast = instance_crf(*args, method="fast", normalize=normalize)
    t_fast = time.perf_counter() - start
    print(f"normalize={normalize}: exact {t_exact:.3f} s, fast {t_fast:.3f} s, max |dQ| = "
          f"{float((exact - fast).abs().max()):.2g}, arg-max differs at {int((exact.argmax(0) != fast.argmax(0)).sum())}"
          f" of {exact[0].numel()} pixels")

# %% [markdown]
# ## Learning the weights: the permutation-invariant loss
#
# Detections come in no particular order, so "person 2" of the prediction need not be person 2 of the ground
# truth. The paper matches before it compares (§3.3, Eq. 4): the ground truth is the permutation of its *instance
# identities* that best overlaps the prediction. `match_segments` assigns ground-truth persons to detections with
# the Hungarian algorithm by the IoU of their person masks; then every part $j$ of a person matched to detection
# $i$ becomes the target $(i, j)$, whatever part the network predicted there. So a detected person's hair that the
# network calls face is taught to be *that person's hair*, and a person split over two detections is reunited on
# the one that overlaps it most. Only a person that no detection takes (no overlapping prediction, nor, when the
# boxes are given, a box covering it) becomes background: it has no detection to belong to, and giving it to
# another person would cost that person precision. The cross-entropy is then taken over the $K$ hardest pixels
# only (online hard example mining; the paper uses $K = 2^{15}$, about 12% of a full-resolution image, so we keep
# 12%). (Matching each (person, part) segment on its own, `level="segment"`, would send the mislabelled hair to
# background and keep the split person split.)

# %% [markdown]
# ```{literalinclude} ../hparse/ops/instance_crf/loss.py
# :pyobject: hungarian_matched_loss
# ```
#
# With the part probabilities fixed, training only the CRF's four weights is the paper's "piecewise" setting
# (Tab. 1). `InstanceCRF` stores them as logarithms, so they stay positive and one step moves each by the same
# relative amount although they start four orders of magnitude apart.

# %%
train_set = SynthCrowd(split="train", num_images=max(TRAIN_STEPS, 1), image_size=SIZE, min_people=2,
                       max_people=max(3, profile.max_people), crowding=0.5, seed=0)
crf = InstanceCRF().to(device)
optimizer = torch.optim.Adam(crf.parameters(), lr=0.05)
history = []
start = time.perf_counter()
for step in range(TRAIN_STEPS):
    target = train_set[step]
    sim = simulated_inputs(target, P + 1, truncate=(0, 0.55), false_positive=0.9, seed=10_000 + step)
    log_prob = crf(sim["Q"].to(device), sim["boxes"].to(device), sim["scores"].to(device),
                   target["image"].to(device), log_probs=True)
    loss = hungarian_matched_loss(log_prob, target["instances"].to(device), target["semantic"].to(device),
                                  num_parts=P, pred_is_log=True, ohem_k=0.12)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    history.append(loss.item())
learned = crf.weights()
print(f"{TRAIN_STEPS} steps in {time.perf_counter() - start:.1f} s")
print("initial weights:", {k: f"{v:.3g}" for k, v in InstanceCRF().weights().items()})
print("learned weights:", {k: f"{v:.3g}" for k, v in learned.items()})
fig, ax = plt.subplots(figsize=(5, 2.6))
ax.plot(history, ".-", lw=0.8)
ax.set_xlabel("step (one SynthCrowd training image)")
ax.set_ylabel("matched CE (OHEM 12%)")
fig.tight_layout()

# %% [markdown]
# ## Ablation over crowding
#
# SynthCrowd's `crowding` knob moves people from the emptiest spots (0) onto each other (1). In crowds, boxes
# overlap and contain parts of other people, which is where the CRF's joint reasoning should matter. Every image gets
# the same treatment as above: jittered boxes, one truncated, one false positive. We score each variant with the
# evaluator of the metrics chapter (AP^r classes averaged with `nanmean`, as the few-image splits here leave some
# classes without any region), with detections re-scored as above.

# %%
SWEEP_VARIANTS = {
    "box only": lambda *a: instance_crf(*a, global_term=False, pairwise=False),
    "box + global": lambda *a: instance_crf(*a, pairwise=False),
    "+ pairwise (initial weights)": lambda *a: instance_crf(*a),
    "+ pairwise (learned weights)": lambda *a: crf(*a),
}
KEYS = ("mIoU", "APp50", "APr50", "APrvol")
sweep = {name: {k: [] for k in KEYS + ("matched CE",)} for name in SWEEP_VARIANTS}
start = time.perf_counter()
with torch.no_grad():
    for crowding in CROWDING:
        data = SynthCrowd(split="val", num_images=SWEEP_IMAGES, image_size=SIZE, min_people=2,
                          max_people=max(3, profile.max_people), crowding=crowding, seed=0)
        evaluators = {name: ParsingEvaluator(P + 1, class_mean="nanmean") for name in SWEEP_VARIANTS}
        losses = {name: [] for name in SWEEP_VARIANTS}
        for i in range(len(data)):
            target = data[i]
            sim = simulated_inputs(target, P + 1, truncate=(0, 0.55), false_positive=0.9, seed=i)
            args = [t.to(device) for t in (sim["Q"], sim["boxes"], sim["scores"], target["image"])]
            for name, run in SWEEP_VARIANTS.items():
                prob = run(*args)
                pred = {k: v.cpu() for k, v in crf_prediction(prob, P, args[2], rescore=True).items()}
                evaluators[name].update(pred, target)
                losses[name].append(float(hungarian_matched_loss(prob.cpu(), target["instances"],
                                                                 target["semantic"], num_parts=P)))
        for name, evaluator in evaluators.items():
            result = evaluator.compute()
            for k in KEYS:
                sweep[name][k].append(result[k])
            sweep[name]["matched CE"].append(float(np.mean(losses[name])))
print(f"sweep: {len(CROWDING) * SWEEP_IMAGES} images x {len(SWEEP_VARIANTS)} variants in "
      f"{time.perf_counter() - start:.1f} s")

fig, axes = plt.subplots(1, len(KEYS), figsize=(3.4 * len(KEYS), 3.0))
for ax, key in zip(axes, KEYS):
    for name in SWEEP_VARIANTS:
        ax.plot(CROWDING, sweep[name][key], "o-", ms=3, label=name)
    ax.set_xlabel("crowding")
    ax.set_title(key, fontsize=9)
axes[0].legend(fontsize=7)
fig.tight_layout()

rows = ["| variant | " + " | ".join(f"{k} (%)" for k in KEYS) + " | matched CE (no OHEM) |",
        "|---|" + "---|" * (len(KEYS) + 1)]
for name in SWEEP_VARIANTS:
    rows.append(f"| {name} | " + " | ".join(f"{100 * np.nanmean(sweep[name][k]):.1f}" for k in KEYS)
                + f" | {np.mean(sweep[name]['matched CE']):.3f} |")
display(Markdown("Ours (SynthCrowd val, simulated inputs, this run; means over the crowding levels):\n\n"
                 + "\n".join(rows)))

# %% [markdown]
# For comparison, the paper's numbers on PASCAL-Person-Part (paper numbers, Tab. 1 of {cite:p}`holistic2017`,
# AP^r of instance-level part segmentation with a trained network and R-FCN detections, in %):
#
# | paper, Tab. 1 | AP^r 0.5 | AP^r 0.6 | AP^r 0.7 | AP^r vol |
# |---|---|---|---|---|
# | box term only, piecewise | 38.0 | 27.4 | 16.7 | 36.6 |
# | box + global + pairwise, piecewise | 38.8 | 28.5 | 17.6 | 37.3 |
# | box + global + pairwise, end-to-end | 39.0 | 28.6 | 17.4 | 37.7 |
# | box term only, piecewise, OHEM | 38.7 | 28.9 | 17.5 | 36.7 |
# | box + global + pairwise, piecewise, OHEM | 39.7 | 29.7 | 18.7 | 37.4 |
# | box + global + pairwise, end-to-end, OHEM | 40.6 | 30.4 | 19.1 | 38.4 |
#
# The last column is the loss the weights were trained on, evaluated on the validation images. Read it beside the
# metrics. The cross-entropy averages over pixels, and most pixels lie in large regions (background, clothes).
# Strong smoothing makes those confidently right. It also erases a shoe or a face of a few pixels, which mIoU and
# AP^r weigh as much as a coat. So, with the part probabilities held fixed, a lower matched loss need not mean
# better parsing. OHEM, which keeps only the hardest 12% of the pixels, is the paper's answer to this imbalance
# (§3.3).
#
# The two tables answer different questions. Ours holds the part probabilities fixed and synthetic; the paper's
# network is trained, and end-to-end training also improves the part segmentation behind the CRF. The direction
# is the thing to compare. The global term is what recovers people that a box cuts short. On its own it only
# makes the detections tie outside their boxes; the pairwise term is what breaks those ties. How much the
# pairwise term adds depends on its weights. The kernel widths were also tuned for ~500 px PASCAL images
# ($\theta_\alpha = 49$ px), and on smaller images the same widths smooth over a larger share of each small part.

# %% [markdown]
# ## The whole network: `build_model("holistic_crf")`
#
# Everything above held the part probabilities fixed. The paper's network (Fig. 2) computes them: a dilated ResNet
# FCN whose res5 features are pooled at five resolutions (§3.1, `pyramid_pooling=True`) gives $Q$; a separately
# trained person detector gives the boxes and scores (here hparse's own Faster R-CNN base, trained in the same run
# on its own losses; its outputs enter the CRF forward-only); the Instance CRF turns both into the instance-level
# parsing; the matched loss of Eq. 4 (with OHEM) trains it. Each component is a flag of
# `hparse.models.holistic.HolisticCRF`, and so are the two training regimes of Table 1: after the part segmentation
# is pre-trained (`segmentation_steps`), `training="piecewise"` freezes it and trains the CRF's weights only, while
# `training="end_to_end"` sends the matched loss through the CRF into the segmentation network. The CRF trains
# "given detections" (jittered ground-truth boxes); the detector supplies the boxes at test time.

# %% [markdown]
# ```{literalinclude} ../hparse/models/holistic.py
# :pyobject: HolisticCRF._losses
# ```
#
# One training step of each regime, at this page's size, shows what each trains: piecewise leaves every weight and
# statistic of the segmentation network as it was, end to end moves it.

# %%
step_data = SynthCrowd(split="train", num_images=2, image_size=64, min_people=2, max_people=3, seed=0)
step_samples = [step_data[i] for i in range(2)]
rows = ["| training | segmentation tensors changed by one step | CRF weights after it |", "|---|---|---|"]
for regime in ("piecewise", "end_to_end"):
    plan = recipe("holistic_crf", get_profile("smoke"), training=regime, segmentation_steps=0)
    torch.manual_seed(0)
    model = build_model("holistic_crf", num_classes=P + 1, **plan["model"]).train()
    before = {k: v.clone() for k, v in model.segmentation.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = model([s["image"] for s in step_samples], step_samples)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    changed = sum(not torch.equal(v, model.segmentation.state_dict()[k]) for k, v in before.items())
    rows.append(f"| {regime} | {changed} of {len(before)} | "
                + ", ".join(f"{k} {v:.3g}" for k, v in model.crf.weights().items()) + " |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# ## Table 1 on SynthCrowd
#
# `hparse.experiments.holistic_table1` trains the six rows of the paper's Table 1 (box term only, with the pairwise
# term, as the paper's reimplementation of Arnab & Torr; box + global; end to end; each with and without OHEM)
# with the same recipe, data and seeds, and scores AP^r of instance-level part segmentation at IoU 0.5, 0.6 and 0.7
# and AP^r_vol. Our numbers (SynthCrowd val, mean ± standard deviation over seeds) stand beside the paper's
# (PASCAL-Person-Part, R-FCN detections):

# %%
ROW_NAMES = {"box_only": "piecewise, box term only", "piecewise": "piecewise", "end_to_end": "end-to-end",
             "box_only_ohem": "piecewise, box term only, OHEM", "piecewise_ohem": "piecewise, OHEM",
             "end_to_end_ohem": "end-to-end, OHEM"}
table_profile = next((name for name in ("gpu", "cpu") if table(name)), None)
ours = {line["row"]: line for line in table(table_profile)} if table_profile else {}
# Each row's AP^r_vol against the row it adds one thing to: the global term, end-to-end training, OHEM.
COMPARED_WITH = {"piecewise": "box_only", "end_to_end": "piecewise", "box_only_ohem": "box_only",
                 "piecewise_ohem": "piecewise", "end_to_end_ohem": "end_to_end"}
records = {name: (load_result(f"{RECORD_PREFIX}{name}", table_profile) or {}).get("metrics") if table_profile else None
           for name, _ in ROWS}
lines = ["| Table 1 row | " + " | ".join(f"ours {k}" for k in TABLE_KEYS) + " | "
         + " | ".join(f"paper {k}" for k in TABLE_KEYS) + " | ours APrvol against |",
         "|---|" + "---|" * (2 * len(TABLE_KEYS) + 1)]
for name, _ in ROWS:
    line = ours.get(name)
    cells = [f"{100 * line['ours'][k][0]:.1f} ± {100 * line['ours'][k][1]:.1f}" if line and k in line["ours"] else "–"
             for k in TABLE_KEYS]
    base = COMPARED_WITH.get(name)
    a, b = records.get(name), records.get(base)
    verdict = (f"{ROW_NAMES[base]}: {spread_verdict(a, b, 'APrvol')}" if a and b and "mean" in a and "mean" in b
               else "")
    lines.append(f"| {ROW_NAMES[name]} | " + " | ".join(cells) + " | "
                 + " | ".join(f"{PAPER_TABLE1[name][k]:.1f}" for k in TABLE_KEYS) + f" | {verdict} |")
source = (f"Ours: profile `{table_profile}`, seeds {', '.join(map(str, ours[next(iter(ours))]['seeds']))}, detections from the person "
          "detector trained in the same run." if ours else
          "*No Table 1 run is recorded yet; the command below makes one (the columns marked – fill in).*")
display(Markdown(source + "\n\n" + "\n".join(lines) + "\n\n`python -m hparse.experiments.holistic_table1 "
                 "--profile cpu --seeds 0 1 --crowding`"))

# %% [markdown]
# ### What each row's trained model outputs
#
# Each run of the table keeps its predictions on the first val images (seed 0). Below, one image per row of panels:
# the ground truth, then each Table 1 model's instance-level parsing (each person outlined in its own colour, parts
# in their colours). The image shown is the one where the box-term-only model and the model with the global term
# differ most in how many pixels they give to people: without the global term a person cannot reach past its
# detection's box, with it the pairwise messages decide how far it extends. The counts under the figure compare
# the person pixels of each model with the ground truth's on all kept images.

# %% tags=["hide-input"]
from hparse.experiments.runner import load_predictions, saved_artefacts
from hparse.viz.topdown import saved_prediction_grid

kept_paths = {}
for name, _ in ROWS:
    found = saved_artefacts("holistic_crf", name)
    if found and found["predictions"] is not None:
        kept_paths[ROW_NAMES[name]] = found["predictions"]
if not kept_paths:
    display(Markdown("*No Table 1 run has saved predictions yet (the command above makes them).*"))
else:
    loaded = {title: load_predictions(path) for title, path in kept_paths.items()}
    person_pixels = {title: [int((p["person_parts"] > 0).any(0).sum()) for p in saved["predictions"]]
                     for title, saved in loaded.items()}
    first = next(iter(loaded.values()))
    truth = [int((t["instances"] > 0).sum()) for t in first["targets"]]
    a, b = ROW_NAMES["box_only"], ROW_NAMES["piecewise"]
    if a in person_pixels and b in person_pixels:
        show = max(range(len(truth)), key=lambda i: abs(person_pixels[b][i] - person_pixels[a][i]))
    else:
        show = 0
    fig = saved_prediction_grid(kept_paths, CIHP_LABELS, index=show, cols=4)
    lines = ["| model | person pixels on the kept val images | share of the ground truth's |", "|---|---|---|",
             f"| ground truth | {sum(truth)} | 100% |"]
    lines += [f"| {title} | {sum(px)} | {100 * sum(px) / max(sum(truth), 1):.0f}% |"
              for title, px in person_pixels.items()]
    display(Markdown(f"Val image {first['image_ids'][show]} shown; seed {first['seed']}, profile "
                     f"{first['profile']}, {first['iterations']} steps.\n\n" + "\n".join(lines)))

# %% [markdown]
# AP^r against crowding, for the end-to-end OHEM model (trained at SynthCrowd's default crowding 0.5), from the same
# command's `--crowding` record:

# %%
crowd = find_results("holistic_crf/table1_crowding", profiles=("gpu", "cpu"))
if crowd is None:
    display(Markdown("*No crowding record yet (`--crowding` above).*"))
else:
    levels = crowd["metrics"]["per_level"]
    fig, ax = plt.subplots(figsize=(4.5, 2.8))
    for key in TABLE_KEYS:
        ax.plot([float(c) for c in levels], [levels[c][key] for c in levels], "o-", ms=3, label=key)
    ax.set_xlabel("crowding")
    ax.set_ylabel("AP^r")
    ax.legend(fontsize=7)
    fig.tight_layout()
    ends = [levels[c]["APrvol"] for c in (min(levels, key=float), max(levels, key=float))]
    display(Markdown(f"AP^r_vol goes from {100 * ends[0]:.1f}% at crowding {min(map(float, levels)):g} to "
                     f"{100 * ends[1]:.1f}% at {max(map(float, levels)):g} (row `{crowd['metrics']['row']}`, seed "
                     f"{crowd['metrics']['seed']}: one seed, so no spread to judge the steps between levels by)."))

# %% [markdown]
# ## Summary
#
# - The Instance CRF labels each pixel with (detection, part) or background. Its unary is the log of a box term
#   ($s_i Q_k(j)$ inside box $i$) plus a global term ($Q_k(j)$ everywhere). Its dense Gaussian pairwise term has
#   one scalar weight per kernel, because the label set changes with $D$.
# - Without the global term, a truncated box truncates the mask. With it, pixels outside every box can join a
#   person, and the pairwise messages decide which one.
# - False positives on background win few pixels, because the box term is proportional to $Q_k(j)$. Re-scoring by
#   the mean probability of a detection's pixels pushes them down the ranking.
# - `method="fast"` computes the dense messages without an $N\times N$ matrix: separable convolutions, plus
#   attention over Gaussian clouds of pixels. It is exact at stride 1. The benchmark above gives its error at
#   coarser strides.
# - Eq. 4's Hungarian matching makes the loss indifferent to the order of the detections: it permutes whole persons,
#   so every part of a matched person keeps its own label on its detection; OHEM keeps the hardest 12% of the pixels.
# - `build_model("holistic_crf")` puts the pieces together (FCN with pyramid pooling, detector, CRF, matched loss);
#   piecewise training fixes the segmentation network, end-to-end training moves it through the CRF.
#
# ## Exercises
#
# 1. Scale the kernel widths with the image (e.g. $\theta_\alpha = 49 \cdot S/500$, $\theta_\gamma = 3 \cdot
#    S/500$ for an $S$-pixel image) and repeat the ablation. Does the pairwise term start to help small parts?
# 2. Train with `normalize=False` (plain kernel sums, weights divided by $2\pi\theta^2 - 1$) instead of the
#    default. Which weights does training move, and how do the learned CRFs compare?
# 3. Pass `level="segment"` to `hungarian_matched_loss`, so that each (person, part) segment is matched on its
#    own. When do the two matchings differ, and does it change what the weights learn?
# 4. Truncate the box from the side instead of from below (edit `boxes` directly). Why does the pairwise term
#    carry the person's label across the box edge better now? (Hint: Potts messages are label-specific.)
# 5. Time `method="fast"` with `app_max_keys` = 512, 2048 and 8192 at 256×256 and plot time against the
#    error with respect to `app_stride=1`.
