"""Recipes: method x profile x dataset -> model, training and data settings. The one place run sizes live.

A model file says what a method *is* (its paper's components, each a flag); a recipe says how big a run of it is and
how it is trained. Every command, experiment, benchmark and chapter asks this module, so a run size is chosen once:

- :func:`recipe` ``(method, profile, dataset="synth", **variant)`` for ``hparse train`` and the experiments;
- :func:`demo_recipe` for ``hparse demo``;
- :func:`pretrain_recipe` for ``hparse pretrain`` (the backbone's starting point, :mod:`hparse.models.pretrain`).

Each returns ``{"model": build_model kwargs (without num_classes), "train": hparse.engine.train kwargs, "data":
SynthCrowd sizes}``. The paper's flags are on in every profile; what changes with the profile is size (``smoke``:
CI's seconds, ``cpu``: a laptop's minutes, ``gpu``: the papers' settings) and, for the laptop, the starting point.

**Why the cpu profile differs from the papers in more than size.** The papers fine-tune ImageNet weights for tens of
thousands of steps. From random weights, a few hundred CPU steps learn almost nothing: the first demo (500 steps)
scored mIoU 0.055 and AP^p_50 0 (``results/cpu/parsing_rcnn/demo_from_scratch.json``); with ground-truth boxes its
parsing branch did no better, so the branch, not the detector, is what limits. The cpu recipes therefore do what the
papers do with what a laptop has (:data:`LAPTOP`): they start the backbone from ``backbone_weights="synthcrowd"``,
a ResNet-FPN pretrained once by ``hparse pretrain`` on SynthCrowd part segmentation and shipped with the package
(the ImageNet stand-in, :mod:`hparse.models.pretrain`; its batch norm frozen and its stem and first stage fixed, as
torchvision does with ImageNet weights); the ResNet is narrowed to base width 24 with a 64-channel FPN, so that it
trains at tens of images per second and its file stays small; AdamW replaces SGD. Parsing R-CNN's branch has no
normalisation, as in the official code: GroupNorm there (32 groups, so 2 channels a group at the cpu width of 64)
slowed the branch down (``results/cpu/parsing_rcnn/branch_probe_norm.json``). Every paper component (PSS, ERR, GCE,
IPBC, the attention branch and its fusions) is still on and still a flag. The demo with these means:
``results/cpu/parsing_rcnn/demo.json`` (its held-out score: ``demo_heldout.json``).
"""

from __future__ import annotations

import copy
from typing import Any

from .engine.profiles import Profile
from .models.detector import scaled_anchor_sizes

__all__ = ["recipe", "demo_recipe", "pretrain_recipe", "warmup_steps", "with_iterations", "synth_data", "LAPTOP",
           "METHODS"]


def warmup_steps(iterations: int, cap: int = 500) -> int:
    """The warm-up rule of every recipe: a tenth of the run, at most ``cap`` steps (Detectron's 500), at least 1."""
    return min(cap, max(iterations // 10, 1))


def with_iterations(recipe_: dict, iterations: int) -> dict:
    """A copy of ``recipe_`` for ``iterations`` steps, its warm-up re-derived by :func:`warmup_steps`."""
    out = copy.deepcopy(recipe_)
    out["train"].update(iterations=iterations, warmup=min(out["train"]["warmup"], warmup_steps(iterations)))
    return out


def synth_data(profile: Profile) -> dict[str, int]:
    """SynthCrowd sizes of a profile: image side, people per image, train and val images."""
    return {key: getattr(profile, key) for key in ("image_size", "max_people", "train_images", "val_images")}


# ------------------------------------------------------------------------------------------------ the laptop

#: What the ``cpu`` profile changes besides sizes, for every top-down method (see the module docstring).
LAPTOP: dict[str, Any] = dict(
    model=dict(backbone="resnet18", backbone_weights="synthcrowd", backbone_width=24, fpn_channels=64,
               backbone_norm="frozen_bn", trainable_layers=3),
    train=dict(optimizer="adamw", lr=1e-3, weight_decay=1e-4, num_workers=0),
)


def _laptop(model: dict, train: dict) -> None:
    """Apply :data:`LAPTOP` to a cpu-profile recipe (in place), the starting point pinned to the file shipped now
    (``"synthcrowd@<digest>"``, :func:`hparse.models.pretrain.pinned`)."""
    from .models.pretrain import pinned

    model.update(LAPTOP["model"], backbone_weights=pinned(LAPTOP["model"]["backbone_weights"]))
    train.update(LAPTOP["train"])


def _synth_sizes(size: int) -> dict:
    """SynthCrowd images are used at their own size; anchors and the FPN level assignment follow it."""
    return dict(train_sizes=None, test_size=None, max_size=None, anchor_sizes=scaled_anchor_sizes(size),
                canonical_scale=max(1, round(224 * size / 800)))


def _schedule(profile: Profile, iterations: int | None = None, **changes) -> dict:
    """The papers' schedule shape at a profile's size: SGD, warm-up, x0.1 at 2/3 and 8/9, lr 0.02 x batch / 16."""
    iterations = iterations or profile.iterations
    train = dict(iterations=iterations, batch_size=profile.batch_size, optimizer="sgd",
                 lr=0.02 * profile.batch_size / 16, warmup=warmup_steps(iterations), schedule="step",
                 clip_grad=10.0, eval_every=profile.eval_every, num_workers=profile.num_workers,
                 checkpoint_every=max(profile.eval_every, 100))
    train.update(changes)
    return train


# ------------------------------------------------------------------------------------------- Parsing R-CNN

# Scales for real datasets (short sides, test side, long-side cap). gpu: the official config (the paper: "randomly
# sampled from [512, 864]", test 800); the smaller profiles shrink them so a run fits a laptop or CI.
_REAL_SCALES = {
    "gpu": ((512, 640, 704, 768, 800, 864), 800, 1333),
    "cpu": ((320, 352, 384, 416), 384, 640),
    "smoke": ((128,), 128, 256),
}


def parsing_rcnn_recipe(profile: Profile, dataset: str = "synth", **flags) -> dict[str, dict]:
    """Parsing R-CNN (:class:`hparse.models.parsing_rcnn.ParsingRCNN`) at a profile's size.

    The paper's flags (PSS, 32x32 ERR RoIs, GCE, IPBC) are on unless ``flags`` change them. ``gpu`` uses the paper's
    widths (GCE 256-d, IPBC 512-d, 32 parsing RoIs and 512 box RoIs per image); ``cpu`` and ``smoke`` narrow the
    parsing head and take fewer RoIs. SynthCrowd images are used at their own size, real datasets are rescaled
    (multi-scale training) to the profile's scales; anchors and the FPN level assignment's canonical scale are scaled
    from the 800-pixel reference to the image size, so that people land on the same pyramid levels as in the paper
    (which matters for PSS).
    """
    if dataset == "synth":
        model = _synth_sizes(profile.image_size)
    else:
        train_sizes, test_size, max_size = _REAL_SCALES.get(profile.name, _REAL_SCALES["gpu"])
        model = dict(train_sizes=train_sizes, test_size=test_size, max_size=max_size,
                     anchor_sizes=scaled_anchor_sizes(test_size), canonical_scale=max(1, round(224 * test_size / 800)))
    model.update(backbone=profile.backbone, pss=True, roi_size=32, gce=True, ipbc=True)
    train = _schedule(profile)
    if profile.name == "gpu":
        model.update(parsing_batch=32)
    elif profile.name == "cpu":
        model.update(parsing_batch=8, head_channels=64, gce_channels=64, box_batch_size_per_image=128,
                     box_representation_size=256, rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
                     rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100, box_detections_per_img=20)
        _laptop(model, train)
    else:
        model.update(parsing_batch=2, head_channels=16, gce_channels=16, box_batch_size_per_image=32,
                     box_representation_size=64, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                     rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, box_detections_per_img=10)
    model.update(flags)
    return {"model": model, "train": train, "data": synth_data(profile)}


# ------------------------------------------------------------------------------------------- RoI attention


def attention_rcnn_recipe(profile: Profile, dataset: str = "synth", attention: str | None = "concat_after_conv4",
                          **flags) -> dict[str, dict]:
    """The RoI attention framework (:class:`hparse.models.attention_rcnn.AttentionRCNN`) on SynthCrowd.

    The paper's structure is kept in every profile (14x14 four-conv box head, max-fused 28x28 parsing RoIs with four
    GroupNorm convs, 14x14 four-conv attention branch, Eq. 1 with alpha = 5); the profile changes only sizes. ``gpu``
    uses the paper's 256-d heads and trains on every positive RoI; ``cpu`` and ``smoke`` narrow the heads and take
    fewer RoIs. The schedule has the paper's shape (x0.1 at 100k/130k and 115k/130k of the run) with the learning
    rate of the Parsing R-CNN recipe, so both top-down methods compare at the same schedule.
    """
    if dataset != "synth":
        raise ValueError("attention_rcnn has a recipe for SynthCrowd only (dataset='synth'); for a real dataset build "
                         "it with hparse.models.build_model and train it with hparse.engine.train")
    model = dict(backbone=profile.backbone, attention=attention, train_sizes=None, test_size=None, max_size=None,
                 anchor_sizes=scaled_anchor_sizes(profile.image_size))
    train = _schedule(profile, milestones=(100 / 130, 115 / 130))
    if profile.name == "cpu":
        model.update(parsing_batch=8, head_channels=64, attention_channels=32, box_conv_channels=32,
                     box_batch_size_per_image=128, box_representation_size=256, rpn_pre_nms_top_n_train=600,
                     rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
                     box_detections_per_img=20)
        _laptop(model, train)
    elif profile.name != "gpu":
        model.update(parsing_batch=2, head_channels=16, attention_channels=16, box_conv_channels=16,
                     box_batch_size_per_image=32, box_representation_size=64, rpn_pre_nms_top_n_train=200,
                     rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
                     box_detections_per_img=6)
    model.update(flags)
    return {"model": model, "train": train, "data": synth_data(profile)}


METHODS = {"parsing_rcnn": parsing_rcnn_recipe, "attention_rcnn": attention_rcnn_recipe}


def recipe(method: str, profile: Profile, dataset: str = "synth", **variant) -> dict[str, dict]:
    """The recipe of ``method`` (a ``build_model`` name) at ``profile`` on ``dataset``; ``variant`` sets flags.

    Example: ``recipe("parsing_rcnn", get_profile("cpu"), gce=False)`` is the cpu run of the model without GCE.
    """
    if method not in METHODS:
        raise ValueError(f"no recipe for model {method!r}; recipes exist for {', '.join(METHODS)}")
    return METHODS[method](profile, dataset, **variant)


# ------------------------------------------------------------------------------------------------ the demo

# The sizes of `hparse demo`, per profile (see demo_recipe). Only sizes differ from the Parsing R-CNN recipe.
_DEMO_SIZES = {
    "smoke": dict(iterations=4),
    "cpu": dict(image_size=320, val_images=50, iterations=1000, train=dict(eval_every=250, checkpoint_every=250)),
    "gpu": dict(iterations=3000),
}


def demo_recipe(profile: Profile) -> dict[str, dict]:
    """Model, training and data settings of ``hparse demo``: a small Parsing R-CNN trained on SynthCrowd.

    The paper's flags (PSS, 32x32 ERR RoIs, GCE, IPBC) stay on; only sizes change. ``smoke`` is the Parsing R-CNN
    recipe for 4 steps (seconds; used by the tests); ``gpu`` is the gpu recipe for 3000 steps. ``cpu`` is the cpu
    recipe for 1000 steps on SynthCrowd images of 320 pixels instead of the profile's 192 (anchors and the FPN level
    assignment scaled with them): the parsing branch's cost is per RoI, not per pixel, so larger images cost a step
    little while RoIAlign's ceiling with perfect stride-4 features rises from 0.65 to 0.80 RoI mIoU and thin
    parts become wider than a P2 cell (``results/cpu/parsing_rcnn/demo.json`` and ``demo_seed1.json`` at 320 pixels,
    ``demo_192px.json`` at 192; ``roi_alignment.json`` and ``roi_alignment_320.json`` for the bound). The starting
    point, pretrained at 192 pixels, is used as it is.
    """
    sizes = _DEMO_SIZES.get(profile.name, _DEMO_SIZES["gpu"])
    data = {key: sizes.get(key, value) for key, value in synth_data(profile).items()}
    batch_size = sizes.get("batch_size", profile.batch_size)
    out = parsing_rcnn_recipe(profile.override(image_size=data["image_size"], batch_size=batch_size))
    out["model"].update(sizes.get("model", {}))
    out = with_iterations(out, sizes["iterations"])
    out["train"].update(**{"eval_every": 0, **sizes.get("train", {})})
    out["data"] = data
    return out


# --------------------------------------------------------------------------------------------- pretraining


# The pretraining that made the shipped `synthcrowd` weights is the cpu one; smoke is the same for 4 steps (CI).
# Two stages: the summed-logit loss from random weights (the first shipped file, 6000 steps), then every level
# supervised on its own, fine-tuned from it (see pretrain_recipe).
_PRETRAIN = {
    "cpu": dict(image_size=192, max_people=5, batch_size=8, stages={1: (6000, 3e-3), 2: (1500, 1e-3)}),
    "smoke": dict(image_size=96, max_people=3, batch_size=2, stages={1: (4, 3e-3), 2: (4, 1e-3)}),
}
PRETRAIN_STAGES = {1: "summed", 2: "per_level"}


def pretrain_recipe(profile: Profile, stage: int = 2) -> dict[str, dict]:
    """``hparse pretrain``: the backbone's SynthCrowd starting point (:mod:`hparse.models.pretrain`), one stage.

    The architecture is the one the ``synthcrowd`` weights fix (ResNet-18, base width 24, 64-channel FPN); images
    are the cpu profile's (192 pixels, up to 5 people) drawn from the train split at
    :data:`~hparse.models.pretrain.PRETRAIN_SEED`, a seed no other recipe uses; AdamW with a cosine schedule and the
    flip augmentation. **Stage 1** (6000 steps of 8 images, lr 3e-3, from random weights) trains the summed logits of
    the levels (``supervision="summed"``); **stage 2** (1500 steps, lr 1e-3) starts from stage 1's weights and
    supervises every pyramid level on its own (``"per_level"``), so that P2 alone, which Parsing R-CNN's parsing
    branch reads, carries the part labels. The shipped file is stage 2's. The gpu profile runs the cpu one (the
    papers' gpu runs start from ImageNet weights instead).
    """
    from .models.pretrain import PRETRAIN_SEED, PRETRAINED

    if stage not in PRETRAIN_STAGES:
        raise ValueError(f"pretraining stage must be one of {sorted(PRETRAIN_STAGES)}, got {stage!r}")
    sizes = _PRETRAIN.get(profile.name, _PRETRAIN["cpu"])
    iterations, lr = sizes["stages"][stage]
    architecture = dict(PRETRAINED["synthcrowd"][1])
    return {
        "model": {**architecture, "supervision": PRETRAIN_STAGES[stage]},
        "train": dict(iterations=iterations, batch_size=sizes["batch_size"], optimizer="adamw", lr=lr,
                      weight_decay=1e-4, warmup=warmup_steps(iterations, cap=200), schedule="cosine", clip_grad=10.0,
                      eval_every=0, num_workers=0, checkpoint_every=500),
        "data": dict(image_size=sizes["image_size"], max_people=sizes["max_people"], train_images=200_000,
                     val_images=100, seed=PRETRAIN_SEED),
        "stage": stage,
    }


# ----------------------------------------------------------------------------------------- bottom-up (MG)

# keypoint set and reference image side (for R and σ) of each dataset the bottom-up parser trains on
_MG_DATASETS = {"synth": "coco17", "densepose": "coco17", "mhp": "mpii16", "ppp": "ppp14"}
_MG_REAL_SIDE = {"gpu": 512, "cpu": 384, "smoke": 128}


def mg_parser_recipe(profile: Profile, dataset: str = "synth", stage: int = 1, init: str | None = None,
                     **flags) -> dict[str, dict]:
    """The multi-granularity bottom-up parser (:class:`hparse.models.mg_parser.MGParser`) at a profile's size.

    Every paper component is on (residual coarse-to-fine DSPF with learnable warping, disks + offsets + Hough voting,
    limb heatmaps, Dykstra matching, uncertainty weighting). The paper's R = 32 px and σ = 9 px are scaled to the
    image side (:func:`hparse.models.mg_targets.scaled_radius`: SynthCrowd's own side, or a reference side per
    profile for real datasets, whose images keep their size). ``gpu``: ResNet-50, 256-d decoders and DSPF levels
    (Panoptic-DeepLab's and the released code's widths), SGD with the paper's lr 0.05 per 32 images, weight decay
    1e-5, x0.1 at 120/150 of the run. ``cpu``: the laptop means of the top-down methods (:data:`LAPTOP`: the shipped
    SynthCrowd starting point, a ResNet-18 at base width 24 with a 64-channel FPN, frozen batch norm, AdamW), 64-d
    decoders. ``smoke``: a tiny
    network for CI.

    **The two steps** (§3.4: "In the first step, the model is trained without differentiable matching ... In the
    second step, we finetune the whole model for another 50 epochs with a fixed learning rate of 1e-4"). ``stage=1``
    (default) is the recipe above, without the matching loss. ``stage=2`` is the fine-tuning run: the same model with
    ``matching_loss=True`` (a flag may turn it off again, which gives the control "as long, without the matching"),
    started from the weights of ``init`` (a stage-1 checkpoint or run folder; the recipe's ``"init"`` entry, loaded by
    :func:`hparse.engine.finetune.load_weights`; a ``{seed}`` in it is filled with the run's seed by the experiment
    runner), for a third of stage 1's steps (the paper's 50 epochs after 150), at a fixed learning rate without
    warm-up and the stage-1 optimiser. The rate: ``gpu`` the paper's 1e-4 per 32 images (SGD, as stage 1); ``cpu`` and
    ``smoke`` the rate their stage 1 ends at (AdamW 1e-5 on cpu: Adam's step does not shrink with the gradient, so the
    paper's 1/50 of the final stage-1 rate would leave the model where it is in a 500-step run). ``init`` with
    ``stage=1`` starts stage 1 from those weights.
    """
    from .models.mg_targets import scaled_radius

    if dataset not in _MG_DATASETS:
        raise ValueError(f"mg_parser needs keypoints; it has recipes for {', '.join(_MG_DATASETS)} (CIHP has none)")
    if stage not in (1, 2):
        raise ValueError(f"mg_parser trains in two steps: stage must be 1 or 2, got {stage!r}")
    if stage == 2 and not init:
        raise ValueError("stage 2 fine-tunes a stage-1 model: give init (its checkpoint or run folder)")
    side = profile.image_size if dataset == "synth" else _MG_REAL_SIDE.get(profile.name, 512)
    model = dict(keypoints=_MG_DATASETS[dataset], disk_radius=scaled_radius(32.0, side),
                 limb_sigma=scaled_radius(9.0, side), dspf="residual", warp=True, matching="dykstra",
                 uncertainty=True)
    if profile.name == "gpu":
        model.update(backbone=profile.backbone, decoder_channels=256, dspf_channels=256)
        train = _schedule(profile, lr=0.05 * profile.batch_size / 32, weight_decay=1e-5, milestones=(0.8,))
        stage2_lr = 1e-4 * profile.batch_size / 32
    elif profile.name == "cpu":
        model.update(decoder_channels=64, dspf_channels=32)
        # A bottom-up model needs more steps than the profile's 600: 1500 steps of batch 4 take about 13 minutes on
        # one CPU thread (0.5 s a step at 192 pixels). From random weights it found nobody in them
        # (results/cpu/mg_parser/train_synth.json), so it starts from the shipped SynthCrowd backbone like the
        # top-down methods (LAPTOP).
        train = _schedule(profile, iterations=1500)
        _laptop(model, train)
        # Thresholds sized to a 1500-step model: its Hough scores peak near 0.4, so the paper's 0.7 (reached after
        # 150 epochs) kept 1 person on 50 val images; 0.3 for keypoints and 0.5 for limbs kept 157 for 147 people
        # (AP^p_vol 0.002 -> 0.087, one stage-1 checkpoint). The paper's values stay the model's defaults.
        model.update(keypoint_threshold=0.3, limb_threshold=0.5)
        stage2_lr = None
    else:
        model.update(backbone="resnet18", backbone_width=16, fpn_channels=32, decoder_channels=32, dspf_channels=16)
        train = _schedule(profile)
        stage2_lr = None
    out = {"model": model, "train": train, "data": synth_data(profile)}
    if stage == 2:
        milestones = train.get("milestones", (2 / 3, 8 / 9))  # the trainer's default when the schedule names none
        final_lr = train["lr"] * 0.1 ** len(milestones)
        iterations = max(1, train["iterations"] // 3)
        out["train"] = {**train, "iterations": iterations, "lr": stage2_lr or final_lr, "warmup": 0,
                        "schedule": "step", "milestones": (),
                        "checkpoint_every": min(train["checkpoint_every"], iterations)}
        model["matching_loss"] = True
        out["init"] = str(init)
    elif init:
        out["init"] = str(init)
    model.update(flags)
    return out


METHODS["mg_parser"] = mg_parser_recipe


# ------------------------------------------------------------------------------ Holistic parsing (Instance CRF)

#: PASCAL-Person-Part is used at full resolution (§4.2: "we train at full resolution"); only its detector rescales.
_HOLISTIC_DATASETS = ("synth", "ppp")


def _holistic_detector(profile: Profile, dataset: str) -> dict:
    """Settings of the holistic model's person detector (hparse's Faster R-CNN base) at a profile's size."""
    if dataset == "synth":
        sizes = _synth_sizes(profile.image_size)
    else:
        train_sizes, test_size, max_size = _REAL_SCALES.get(profile.name, _REAL_SCALES["gpu"])
        sizes = dict(train_sizes=train_sizes, test_size=test_size, max_size=max_size,
                     anchor_sizes=scaled_anchor_sizes(test_size), canonical_scale=max(1, round(224 * test_size / 800)))
    if profile.name == "cpu":
        sizes.update(box_batch_size_per_image=128, box_representation_size=256, rpn_pre_nms_top_n_train=600,
                     rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
                     box_detections_per_img=20)
    elif profile.name != "gpu":
        sizes.update(box_batch_size_per_image=32, box_representation_size=64, rpn_pre_nms_top_n_train=200,
                     rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
                     box_detections_per_img=10)
    return sizes


def holistic_crf_recipe(profile: Profile, dataset: str = "synth", **flags) -> dict[str, dict]:
    """The holistic parser (:class:`hparse.models.holistic.HolisticCRF`) on SynthCrowd or PASCAL-Person-Part.

    Every component is on: a dilated (output stride 8) ResNet FCN with pyramid pooling, the Instance CRF with its
    box, global and pairwise terms, the matched loss with OHEM, end-to-end training (Table 1's last row); each is a
    flag of ``flags``. The detections at test time come from a person detector trained in the same run, on its own
    losses, from the same starting weights (``detections="detector"``); the CRF trains given jittered ground-truth
    boxes. The first half of the run pre-trains the part segmentation alone (``segmentation_steps``), the second
    trains the instance module (piecewise) or everything (end to end) (cpu: the first 500 of 800).

    - ``gpu``: the paper's ResNet-101, PSPNet's 512-d classifier, 5 mean-field iterations, the fast pairwise path's
      default 2048 keys, SGD at the Parsing R-CNN recipe's learning rate.
    - ``cpu``: the laptop ingredients (:data:`LAPTOP`: the shipped SynthCrowd ResNet-18 at width 24, frozen batch
      norm, AdamW), the FCN reading that network's pyramid instead of dilated res5 (``fcn_features="fpn"``, see
      :mod:`hparse.models.holistic`), a 64-d classifier, 3 mean-field iterations (the released model's count) and
      512 keys, because the CRF's messages cost about H·W x keys x D·P per iteration. 800 steps of 2 images, the
      first 500 pre-training the segmentation (from 150 to 500 such steps its part mIoU rose from 0.09 to 0.21;
      the CRF on it with ground-truth boxes then gave AP^r_50 0.10, against 0.07 without the pairwise term, on 12
      val images), evaluated on 50 val images. One core: about 0.6 s a step while the segmentation and the detector
      pre-train, 2.2 s a step through the CRF, about 17 minutes a run.
    - ``smoke``: a tiny network for CI.
    """
    if dataset not in _HOLISTIC_DATASETS:
        raise ValueError(f"holistic_crf has recipes for {', '.join(_HOLISTIC_DATASETS)}, got {dataset!r}")
    model = dict(output_stride=8, pyramid_pooling=True, detections="detector", box_term=True, global_term=True,
                 pairwise=True, normalize=True, ohem=True, ohem_k=0.12, training="end_to_end",
                 detector=_holistic_detector(profile, dataset))
    if profile.name == "gpu":
        model.update(backbone="resnet101", head_channels=512, crf_iters=5, app_max_keys=2048)
        train = _schedule(profile)
    elif profile.name == "cpu":
        model.update(fcn_features="fpn", head_channels=64, crf_iters=3, app_max_keys=512, max_detections=10,
                     segmentation_steps=500)
        train = _schedule(profile.override(batch_size=2), iterations=800)
        _laptop(model, train)
    else:
        model.update(backbone="resnet18", backbone_width=16, fpn_channels=32, head_channels=16, crf_iters=2,
                     app_max_keys=256, max_detections=6)
        train = _schedule(profile)
    model.setdefault("segmentation_steps", train["iterations"] // 2)
    model.update(flags)
    data = synth_data(profile)
    if profile.name == "cpu":
        data["val_images"] = 50
    return {"model": model, "train": train, "data": data}


METHODS["holistic_crf"] = holistic_crf_recipe
