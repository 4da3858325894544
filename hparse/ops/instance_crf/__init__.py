"""The Instance CRF of Li, Arnab & Torr, "Holistic, Instance-level Human Parsing" (BMVC 2017), §3.2–3.4.

A category-level part segmentation ``Q`` (P + 1 channels, channel 0 background) and D person detections are turned
into an instance-level part segmentation with 1 + D·P labels: the background label (0, 0) and (detection i, part j)
for i = 1..D, j = 1..P. Channel ``1 + (i - 1)·P + (j - 1)`` holds label (i, j) (see :func:`crf_channel`).

The package reads like the paper, one module per concept:

- §3.2, Eq. 1: energy ``E(v) = -Σ_k ln[w_box ψBox_k(v_k) + w_global ψGlobal_k(v_k) + ε] + Σ_{k<m} ψPairwise``.
- :mod:`.options`: :class:`CRFOptions`, every setting that is not a learned weight, and the released defaults.
- :mod:`.potentials`, §3.2.1, Eq. 2 (:func:`instance_unary`): ``ψBox_k(i, j) = s_i Q_k(j)`` if pixel k lies in
  box i, else 0; ``ψBox_k(0, 0) = 0``. §3.2.2, Eq. 3: ``ψGlobal_k(i, j) = Q_k(j)`` and ``ψGlobal_k(0, 0) =
  Q_k(0)`` — parts outside a (truncated) box can still be claimed by its person.
- :mod:`.kernels`, §3.2.3 (:func:`pairwise_messages`): dense Gaussian pairwise term [Krähenbühl & Koltun], Potts
  compatibility, one scalar weight per kernel shared by all labels (the label set changes with D, so no per-label
  parameter can exist).
- :mod:`.mean_field`: mean-field inference unrolled as an RNN [Zheng et al.], so gradients reach Q, the scores
  and the weights (:func:`instance_crf`, :class:`InstanceCRF`).
- :mod:`.loss`, §3.3, Eq. 4 (:func:`match_segments`, :func:`hungarian_matched_loss`): the permutation-invariant
  loss.
- :mod:`.outputs`, §3.4 (:func:`crf_instances`, :func:`crf_semantic`, :func:`crf_to_person_parts`,
  :func:`crf_prediction`): human instances and semantic parts from the same output.

Choices where the paper is vague (written down once here):

- *Pixel in box.* Boxes are xyxy in continuous pixel coordinates (pixel (x, y) covers [x, x+1) × [y, y+1)); pixel
  k is in box i when its centre (x + 0.5, y + 0.5) lies in the closed box. Boxes from ``masks_to_boxes`` (inclusive
  max coordinates) need +1 on x2, y2.
- *Pairwise kernels.* Appearance ``exp(-|p_k - p_m|²/2θα² - |I_k - I_m|²/2θβ²)`` and smoothness
  ``exp(-|p_k - p_m|²/2θγ²)`` with positions in pixels and colours in 0–255 units. Potts compatibility turns
  the mean-field update into ``Q_k(l) ∝ exp(-U_k(l) + Σ_{m≠k} [w_app k_app + w_smooth k_smooth](k, m) Q_m(l))``
  (the label-independent constant of the Potts penalty cancels in the softmax).
- *Normalisation* (default ``normalize=True``, the released layers' form): each kernel's message is divided by
  the pixel's kernel mass ``Σ_{m≠k} k(k, m)``, i.e. it is a Gaussian-weighted *average* of the neighbours' Q, so
  its size does not depend on how many neighbours a pixel has. The released lattice filters also count the pixel
  itself in both sums; we keep the m ≠ k of the message in both. ``normalize=False`` is the plain sum above.
- *Defaults.* θα = 49, θβ = 5, θγ = 3 and the kernel weights 4 (appearance) and 3 (smoothness) are those of the
  authors' released Instance-CRF model (DIN, CVPR 2017; ``din.prototxt``), which multiplies normalised kernels.
  For ``normalize=False`` those weights are divided by the mass a pixel sees inside a uniform region, ``2πθ² - 1``
  (:func:`default_pairwise_weights`), so that both forms send the same message there, and only there: on small
  images the appearance kernel's actual mass is far below 2πθα² (:mod:`.kernels`), so the
  unnormalised appearance message shrinks to a few percent of the released one. ``w_box = w_global = 1`` are the
  released initial values of the two unary weights. Scores enter as given; :func:`squash_detection_scores` is the
  released layer's ``sigmoid(2s - 1)``.
- *Box-term-only ablation* (``global_term=False``; Tab. 1 "box term only", the model of Arnab & Torr): the person
  labels lose their global term but the background keeps ``w_global Q_k(0)`` — with ``ψBox(0, 0) = 0`` it would
  otherwise have no potential at all; the released box layer gives the background its own channel in the same way.

How the pairwise messages are computed (``method="exact"``, ``"fast"`` or ``"lattice"``), what the approximate
paths cost and how far they are from the exact one is written down in :mod:`.kernels` (and the permutohedral
lattice in :mod:`.lattice`).
"""

from .kernels import message_kernels, pairwise_messages
from .loss import SegmentMatching, hungarian_matched_loss, match_segments
from .mean_field import InstanceCRF, instance_crf
from .options import EXACT_MAX_PIXELS, THETA_ALPHA, THETA_BETA, THETA_GAMMA, CRFOptions, default_pairwise_weights
from .outputs import crf_instances, crf_labels, crf_prediction, crf_semantic, crf_to_person_parts
from .potentials import boxes_to_masks, crf_channel, instance_unary, squash_detection_scores

__all__ = [
    "THETA_ALPHA",
    "THETA_BETA",
    "THETA_GAMMA",
    "EXACT_MAX_PIXELS",
    "CRFOptions",
    "default_pairwise_weights",
    "squash_detection_scores",
    "crf_channel",
    "boxes_to_masks",
    "instance_unary",
    "message_kernels",
    "pairwise_messages",
    "instance_crf",
    "InstanceCRF",
    "crf_labels",
    "crf_instances",
    "crf_semantic",
    "crf_to_person_parts",
    "crf_prediction",
    "SegmentMatching",
    "match_segments",
    "hungarian_matched_loss",
]
