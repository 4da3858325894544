"""The renderer behind :class:`~hparse.data.synth.SynthCrowd`: articulated bodies, shaped parts, a z-buffer, shading.

A scene is built in four steps, each a function here, so that the data chapter can show them one at a time:

1. **Bodies** (:func:`sample_person`, :func:`person_joints`). A person is a skeleton in a body frame
   ``(l, u, f)`` = (the person's own *left*, *up*, *forward*), in units of the standing height. A pose
   (``standing``, ``walking``, ``arms_raised``, ``sitting``) sets limb directions from abduction/flexion angles
   sampled inside joint limits (:data:`JOINT_LIMITS`). The person is turned by a yaw ``theta`` about the vertical
   axis and projected orthographically: image ``x = l cos(theta) + f sin(theta)`` and depth towards the camera
   ``z = -l sin(theta) + f cos(theta)``. ``theta = 0`` faces the camera (``front``), ``pi`` shows the back,
   ``+-pi/2`` a side view. Because the person's left maps to ``+x`` when they face the camera, **a front-facing
   person's left arm (CIHP ``Left-arm``) lies on the image's right**, and on the image's left seen from the back:
   left/right always mean the person's own left/right, as in CIHP.
2. **Parts** (:func:`person_primitives`). Each CIHP part is a shaped polygon: tapered capsules for limbs, sleeves
   and trouser legs, ellipses for heads, hair and hands, trapezoids for torsos, flared hulls for skirts, dresses and
   coat tails. A primitive carries a depth key; drawing a person's primitives in key order (painter's algorithm)
   resolves self-occlusion, and the view decides what is drawn (a face seen from the front, only hair from the back,
   which arm passes in front of the torso).
3. **Z-buffer** (:func:`rasterize`). People are drawn back to front into one integer *code* buffer
   (``code = slot * 1024 + segment * 32 + label``), so the buffer ends up holding exactly the visible pixels: the
   ground truth of an occluded person is what is left of them. Background clutter is drawn first, and optional
   foreground objects last (they occlude people without being people). The canvas is padded beyond the image so
   that each person's full (amodal) area is known, which gives the occlusion and truncation statistics.
4. **Appearance** (:func:`shade`). Colours come from per-code look-up tables (skin tones, hair colours, clothing
   colours), patterns (stripes, checks, mottled noise) are evaluated for all pixels at once, then illumination,
   darkening near part boundaries, an optional blur and sensor noise. Clutter uses the same colour distributions
   as bodies, so colour alone does not solve parsing.

Everything is vectorised: Python loops run over people and primitives (tens per image), never over pixels.

Choices written down here (where the real datasets leave room):
- The neck is labelled ``Torso-skin``; hands are part of ``Left-arm``/``Right-arm`` (or ``Glove``); feet are the
  shoes; long hair hanging over the back is ``Hair``.
- Ground truth has no ignore label (255 never occurs): labels are rendered crisply from the same polygons that
  colour the image, and the image is blurred afterwards, as a camera would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "POSES",
    "VIEWS",
    "JOINT_LIMITS",
    "SEGMENTS",
    "KEYPOINT_SEGMENTS",
    "Person",
    "Clutter",
    "Scene",
    "Primitive",
    "Draws",
    "draws",
    "sample_person",
    "person_joints",
    "person_keypoints",
    "KEYPOINT_NAMES",
    "person_primitives",
    "sample_clutter",
    "sample_scene",
    "solo_scene",
    "rasterize",
    "Raster",
    "shade",
    "decode",
]

# --------------------------------------------------------------------------------------------------- labels

# CIHP label values (hparse.data.labels.CIHP_LABELS order).
HAT, HAIR, GLOVE, SUNGLASSES, UPPER, DRESS, COAT, SOCKS, PANTS = 1, 2, 3, 4, 5, 6, 7, 8, 9
TORSO_SKIN, SCARF, SKIRT, FACE, L_ARM, R_ARM, L_LEG, R_LEG, L_SHOE, R_SHOE = 10, 11, 12, 13, 14, 15, 16, 17, 18, 19

# Body segments: which piece of the body drew a pixel. Used for keypoint visibility and the chapter's figures.
SEGMENTS = {
    "head": 1, "torso": 2, "pelvis": 3, "hair_back": 4,
    "left_upper_arm": 5, "left_forearm": 6, "right_upper_arm": 7, "right_forearm": 8,
    "left_thigh": 9, "left_shin": 10, "left_foot": 11, "right_thigh": 12, "right_shin": 13, "right_foot": 14,
    "seat": 31,
}
_S = SEGMENTS

# COCO-17 keypoint k is *visible* only where the pixel under it shows its own person *and* one of these segments;
# a wrist behind its own torso or a knee under a skirt is therefore marked occluded (v=1).
KEYPOINT_SEGMENTS: tuple[tuple[int, ...], ...] = (
    (_S["head"],), (_S["head"],), (_S["head"],), (_S["head"],), (_S["head"],),
    (_S["torso"], _S["left_upper_arm"]), (_S["torso"], _S["right_upper_arm"]),
    (_S["left_upper_arm"], _S["left_forearm"]), (_S["right_upper_arm"], _S["right_forearm"]),
    (_S["left_forearm"],), (_S["right_forearm"],),
    (_S["torso"], _S["pelvis"], _S["left_thigh"]), (_S["torso"], _S["pelvis"], _S["right_thigh"]),
    (_S["left_thigh"], _S["left_shin"]), (_S["right_thigh"], _S["right_shin"]),
    (_S["left_shin"], _S["left_foot"]), (_S["right_shin"], _S["right_foot"]),
)

SLOT_SHIFT, SEGMENT_SHIFT = 10, 5  # code = slot << 10 | segment << 5 | label
MAX_CLUTTER = 30  # clutter objects use segment values 1..30 of slot 0
SEAT_SEGMENT = 31  # slot 0, segment 31: the seats under sitting people (background, label 0)

# ---------------------------------------------------------------------------------------------------- poses

POSES = ("standing", "walking", "arms_raised", "sitting")
VIEWS = ("front", "back", "side")
_VIEW_PROBS = (0.45, 0.25, 0.30)
_POSE_PROBS = (0.35, 0.30, 0.17, 0.18)

# Joint limits (degrees) that every sampled pose respects. Shoulder/hip: abduction (away from the body's midline,
# in the frontal plane) and flexion (forwards, in the sagittal plane); elbow: flexion; knee: flexion (backwards).
JOINT_LIMITS = {
    "shoulder_abduction": (0.0, 180.0),
    "shoulder_flexion": (-60.0, 110.0),
    "elbow_flexion": (0.0, 150.0),
    "hip_abduction": (0.0, 45.0),
    "hip_flexion": (-30.0, 110.0),
    "knee_flexion": (0.0, 140.0),
    "torso_lean": (-10.0, 20.0),
}

# Body proportions, in units of standing height (about 7.5 heads).
_HEAD_RY, _HEAD_RX, _HEAD_RZ = 0.066, 0.052, 0.060
_SHOULDER_W, _HIP_W, _TORSO_D = 0.115, 0.080, 0.065
_UPPER_ARM, _FOREARM, _HAND = 0.170, 0.150, 0.060
_THIGH, _SHIN, _FOOT = 0.235, 0.230, 0.095
_SPINE = 0.300  # pelvis -> shoulder line
_NECK = 0.035
_ANKLE_H = 0.035  # ankle above the ground


class Draws:
    """Uniform numbers from a NumPy generator, drawn in blocks and served as Python floats.

    A scene asks for a few hundred single numbers (angles, colours, sizes); one generator call each would cost more
    than all the drawing. The sequence is still fully determined by the generator's seed. The methods mirror the
    ``numpy.random.Generator`` calls used here (``random``, ``uniform``, ``integers``).
    """

    def __init__(self, rng: np.random.Generator, block: int = 256):
        self.rng, self.block = rng, block
        self._next = iter(()).__next__  # serves the current block; empty until the first draw

    def random(self) -> float:
        """One uniform number in [0, 1)."""
        try:  # (a list iterator is the cheapest way to serve the block: hundreds of draws per image)
            return self._next()
        except StopIteration:
            self._next = iter(self.rng.random(self.block).tolist()).__next__
            return self._next()

    def uniform(self, lo: float = 0.0, hi: float = 1.0, size: int | None = None):
        """A float in [lo, hi), or an array of ``size`` of them."""
        if size is None:
            return lo + (hi - lo) * self.random()
        return np.array([lo + (hi - lo) * self.random() for _ in range(size)])

    def integers(self, lo: int, hi: int | None = None) -> int:
        """An int in [0, lo) or, with ``hi``, in [lo, hi)."""
        lo, hi = (0, lo) if hi is None else (lo, hi)
        return lo + min(int(self.random() * (hi - lo)), hi - lo - 1)


def draws(rng: np.random.Generator | Draws) -> Draws:
    """``rng`` as :class:`Draws` (unchanged when it already is one)."""
    return rng if isinstance(rng, Draws) else Draws(rng)


def _pick(rng: Draws, options, probs=None):
    """One of ``options`` (with probabilities ``probs``, else uniform): a cheaper ``rng.choice`` for scalars."""
    r = rng.random()
    if probs is None:
        return options[min(int(r * len(options)), len(options) - 1)]
    acc = 0.0
    for option, prob in zip(options, probs):
        acc += prob
        if r < acc:
            return option
    return options[-1]


def _deg(lo: float, hi: float, rng: Draws) -> float:
    """An angle drawn uniformly in [lo, hi] degrees, in radians."""
    return math.radians(rng.uniform(lo, hi))


def _clip_angle(name: str, value: float) -> float:
    """``value`` (radians) clipped to the joint limit ``JOINT_LIMITS[name]`` (degrees)."""
    lo, hi = JOINT_LIMITS[name]
    return min(max(value, math.radians(lo)), math.radians(hi))


def _sample_angles(pose: str, rng: Draws) -> dict[str, float]:
    """Limb angles (radians) of ``pose``; ``*_a`` abduction, ``*_b`` flexion, ``*_e`` elbow, ``*_k`` knee."""
    a: dict[str, float] = {"lean": _deg(-3, 4, rng)}
    for side in ("l", "r"):  # defaults: relaxed standing
        a[f"{side}_sh_a"] = _deg(4, 18, rng)
        a[f"{side}_sh_b"] = _deg(-10, 15, rng)
        a[f"{side}_el"] = _deg(0, 30, rng)
        a[f"{side}_hip_a"] = _deg(1, 7, rng)
        a[f"{side}_hip_b"] = _deg(-5, 6, rng)
        a[f"{side}_knee"] = _deg(0, 10, rng)
    if pose == "walking":
        swing = 1.0 if rng.random() < 0.5 else -1.0
        front, back = ("l", "r") if swing > 0 else ("r", "l")
        a["lean"] = _deg(2, 8, rng)
        a[f"{front}_hip_b"], a[f"{back}_hip_b"] = _deg(15, 32, rng), -_deg(10, 25, rng)
        a[f"{front}_knee"], a[f"{back}_knee"] = _deg(0, 15, rng), _deg(20, 55, rng)
        a[f"{front}_sh_b"], a[f"{back}_sh_b"] = -_deg(15, 35, rng), _deg(15, 40, rng)  # arms swing opposite
        a["l_el"], a["r_el"] = _deg(10, 45, rng), _deg(10, 45, rng)
    elif pose == "arms_raised":
        both = rng.random() < 0.6
        for side in ("l", "r") if both else (("l",) if rng.random() < 0.5 else ("r",)):
            a[f"{side}_sh_a"] = _deg(100, 175, rng)
            a[f"{side}_sh_b"] = _deg(-10, 35, rng)
            a[f"{side}_el"] = _deg(0, 70, rng)
    elif pose == "sitting":
        a["lean"] = _deg(-5, 8, rng)
        for side in ("l", "r"):
            a[f"{side}_hip_b"] = _deg(75, 100, rng)
            a[f"{side}_hip_a"] = _deg(2, 14, rng)
            a[f"{side}_knee"] = _deg(70, 110, rng)
            a[f"{side}_sh_b"] = _deg(5, 35, rng)
            a[f"{side}_el"] = _deg(40, 90, rng)
    elif pose != "standing":
        raise ValueError(f"unknown pose {pose!r}; poses: {', '.join(POSES)}")
    # Respect the joint limits whatever the ranges above say (a safeguard when ranges are edited).
    a["lean"] = _clip_angle("torso_lean", a["lean"])
    for side in ("l", "r"):
        a[f"{side}_sh_a"] = _clip_angle("shoulder_abduction", a[f"{side}_sh_a"])
        a[f"{side}_sh_b"] = _clip_angle("shoulder_flexion", a[f"{side}_sh_b"])
        a[f"{side}_el"] = _clip_angle("elbow_flexion", a[f"{side}_el"])
        a[f"{side}_hip_a"] = _clip_angle("hip_abduction", a[f"{side}_hip_a"])
        a[f"{side}_hip_b"] = _clip_angle("hip_flexion", a[f"{side}_hip_b"])
        a[f"{side}_knee"] = _clip_angle("knee_flexion", a[f"{side}_knee"])
    return a


def _limb_dir(side: float, abduction: float, flexion: float) -> tuple[float, float, float]:
    """Unit direction (l, u, f) of a limb hanging down, abducted sideways (``side`` = +1 left, -1 right) and
    flexed forwards: ``(side sin a cos b, -cos a cos b, sin b)``."""
    cb = math.cos(flexion)
    return side * math.sin(abduction) * cb, -math.cos(abduction) * cb, math.sin(flexion)


def _along(p: tuple, d: tuple, length: float) -> tuple[float, float, float]:
    """``p + length * d`` for 3-tuples (plain floats: a person has ~30 joints, numpy would cost more than math)."""
    return p[0] + length * d[0], p[1] + length * d[1], p[2] + length * d[2]


# ---------------------------------------------------------------------------------------------- appearance

_SKIN = np.array([(255, 224, 196), (241, 194, 155), (224, 172, 125), (198, 134, 86), (161, 102, 60),
                  (120, 76, 45), (90, 58, 38), (250, 206, 182)], dtype=np.float32) / 255
_HAIR = np.array([(22, 17, 14), (58, 38, 26), (104, 70, 42), (196, 158, 96), (165, 72, 35), (150, 148, 145),
                  (232, 222, 196), (40, 30, 60)], dtype=np.float32) / 255

PLAIN, STRIPES, CHECKS, MOTTLED, GRADIENT = 0, 1, 2, 3, 4  # GRADIENT: the background only
SKIN_KEY = 0  # Person.patterns[SKIN_KEY] is the skin (face, arms, legs, neck, torso-skin); other keys are labels
_PATTERN_PROBS = (0.45, 0.22, 0.13, 0.20)


def _clip(x: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """``np.clip(x, lo, hi)`` for the few-number arrays of scene sampling, where ``np.clip``'s Python-level wrapper
    costs more than the work. (Equal to ``np.clip`` but for NaN and negative zero, which never reach it here.)"""
    return np.minimum(np.maximum(x, lo), hi)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] -> RGB (3,) float32."""
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float32)


def _cloth_colour(rng: Draws) -> np.ndarray:
    """A clothing colour: a neutral (black, white, grey), a denim blue, or any hue."""
    r = rng.random()
    if r < 0.22:  # neutrals: black, white, greys
        return _clip(np.full(3, _pick(rng, (0.08, 0.15, 0.35, 0.6, 0.85, 0.95)) + rng.uniform(-0.04, 0.04),
                             dtype=np.float32))
    if r < 0.32:  # denim
        return _hsv_to_rgb(rng.uniform(0.57, 0.63), rng.uniform(0.35, 0.7), rng.uniform(0.25, 0.65))
    return _hsv_to_rgb(rng.random(), rng.uniform(0.15, 0.9), rng.uniform(0.2, 0.95))


def _any_colour(rng: Draws) -> np.ndarray:
    """A colour from the people's own distributions (skin, hair, clothing): what clutter is painted with."""
    r = rng.random()
    if r < 0.25:
        return _clip(_SKIN[rng.integers(len(_SKIN))] + rng.uniform(-0.04, 0.04, 3)).astype(np.float32)
    if r < 0.4:
        return _HAIR[rng.integers(len(_HAIR))].copy()
    return _cloth_colour(rng)


@dataclass
class Pattern:
    """Appearance of one garment or object: two colours mixed by a pattern. ``period`` is in pixels."""

    colour: np.ndarray
    colour2: np.ndarray
    kind: int = PLAIN
    period: float = 8.0
    angle: float = 0.0
    phase: float = 0.0


def _pattern(rng: Draws, colour: np.ndarray, scale_px: float, kinds=_PATTERN_PROBS) -> Pattern:
    """A pattern on ``colour``: its kind drawn with probabilities ``kinds`` (plain, stripes, checks, mottled), a
    second colour (another clothing colour, or a darker/lighter shade), and a period of 2.5-7% of ``scale_px``."""
    kind = _pick(rng, (PLAIN, STRIPES, CHECKS, MOTTLED), kinds)
    contrast = rng.uniform(0.25, 0.6) if kind == MOTTLED else rng.uniform(0.3, 0.8)
    second = _cloth_colour(rng) if rng.random() < 0.5 else colour * (1 - contrast) + (rng.random() > 0.5) * contrast
    return Pattern(colour=colour.astype(np.float32), colour2=_clip(np.asarray(second, dtype=np.float32)),
                   kind=kind, period=max(2.5, scale_px * rng.uniform(0.025, 0.07)),
                   angle=rng.uniform(0, math.pi), phase=rng.uniform(0, 2 * math.pi))


@dataclass
class Person:
    """One person of a scene: pose, view, placement and outfit. Lengths in pixels unless said otherwise."""

    pose: str
    view: str  # front | back | side
    yaw: float  # radians; 0 faces the camera
    angles: dict[str, float]
    outfit: dict[str, object]  # garment kinds and accessory flags
    patterns: dict[int, Pattern]  # CIHP label -> appearance
    proportions: dict[str, float]  # multiplicative jitter of body proportions
    depth: float = 0.5  # 0 far .. 1 near
    height: float = 100.0  # standing height in pixels (the person's scale)
    x: float = 0.0  # image x of the pelvis
    ground: float = 0.0  # image y of the lowest point (feet)


def sample_person(rng: np.random.Generator | Draws, pose: str | None = None, view: str | None = None,
                  yaw: float | None = None) -> Person:
    """Draw a pose, a view and an outfit. ``pose``/``view``/``yaw`` force a value (used by the chapter's gallery)."""
    rng = draws(rng)
    pose = pose if pose is not None else _pick(rng, POSES, _POSE_PROBS)
    drawn_view = _pick(rng, VIEWS, _VIEW_PROBS)
    view = view if view is not None else drawn_view
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; views: {', '.join(VIEWS)}")
    jitter = math.radians(rng.uniform(-22, 22))
    side = 1.0 if rng.random() < 0.5 else -1.0
    if yaw is None:
        yaw = {"front": 0.0, "back": math.pi, "side": side * math.pi / 2}[view] + jitter
    angles = _sample_angles(pose, rng)

    skin = _clip(_SKIN[rng.integers(len(_SKIN))] + rng.uniform(-0.03, 0.03, 3)).astype(np.float32)
    hair = _HAIR[rng.integers(len(_HAIR))]
    upper = _pick(rng, ("tshirt", "longsleeve", "tank", "coat", "dress"), (0.32, 0.22, 0.12, 0.18, 0.16))
    lower = "dress" if upper == "dress" else _pick(rng, ("pants", "shorts", "skirt"), (0.6, 0.2, 0.2))
    outfit: dict[str, object] = {
        "upper": upper,
        "lower": lower,
        "sleeve": {"tshirt": rng.uniform(0.35, 0.8), "longsleeve": 1.0, "tank": 0.0, "coat": 1.0,
                   "dress": _pick(rng, (0.0, rng.uniform(0.3, 0.7)))}[upper],
        "coat_open": upper == "coat" and rng.random() < 0.5,
        "crop_top": upper in ("tshirt", "tank") and rng.random() < 0.1,
        "v_neck": upper != "coat" and rng.random() < 0.35,
        "skirt_len": rng.uniform(0.35, 0.9) if lower == "skirt" else rng.uniform(0.6, 1.5),
        "coat_len": rng.uniform(0.25, 0.7),
        "shorts_len": rng.uniform(0.35, 0.75),
        "hair": _pick(rng, ("short", "long", "bald"), (0.55, 0.38, 0.07)),
        "hat": rng.random() < 0.15,
        "sunglasses": rng.random() < 0.12,
        "scarf": rng.random() < 0.10,
        "gloves": rng.random() < 0.08,
        "socks": rng.random() < 0.45,
        "skin": skin,
        "hair_colour": hair,
    }
    # Appearance of the garments this person wears (only those: drawing the others would waste time).
    worn = {UPPER: upper in ("tshirt", "longsleeve", "tank") or bool(outfit["coat_open"]),
            DRESS: upper == "dress", COAT: upper == "coat", PANTS: lower in ("pants", "shorts"),
            SKIRT: lower == "skirt", HAT: outfit["hat"], SCARF: outfit["scarf"],
            SOCKS: outfit["socks"] and lower != "pants"}
    kinds = {COAT: (0.6, 0.1, 0.2, 0.1), PANTS: (0.65, 0.1, 0.1, 0.15), HAT: (0.8, 0.1, 0.05, 0.05),
             SCARF: (0.3, 0.4, 0.3, 0.0), SOCKS: (0.6, 0.4, 0.0, 0.0)}
    patterns = {
        SKIN_KEY: Pattern(skin, skin * 0.9, MOTTLED, 6.0),
        HAIR: Pattern(hair, _clip(hair * 0.7 + 0.05), STRIPES, 3.0, rng.uniform(1.2, 1.9)),
        GLOVE: Pattern(_cloth_colour(rng), np.zeros(3, np.float32)),
        L_SHOE: Pattern(_shoe_colour(rng), np.zeros(3, np.float32)),
        SUNGLASSES: Pattern(np.array([0.05, 0.05, 0.07], np.float32) + rng.uniform(0, 0.1), np.zeros(3, np.float32)),
    }
    for label, wears in worn.items():
        if wears:
            patterns[label] = _pattern(rng, _cloth_colour(rng), 100.0, kinds.get(label, _PATTERN_PROBS))
    patterns[R_SHOE] = patterns[L_SHOE]
    proportions = {
        "width": rng.uniform(0.85, 1.25),
        "limbs": rng.uniform(0.93, 1.07),
        "head": rng.uniform(0.92, 1.1),
    }
    return Person(pose=pose, view=view, yaw=float(yaw), angles=angles, outfit=outfit, patterns=patterns,
                  proportions=proportions)



def _shoe_colour(rng: Draws) -> np.ndarray:
    """Mostly black, dark or white shoes, sometimes coloured ones."""
    return np.full(3, _pick(rng, (0.06, 0.12, 0.9)), np.float32) if rng.random() < 0.6 else _cloth_colour(rng)


# ------------------------------------------------------------------------------------------------ skeleton


KEYPOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle")  # COCO-17 order


def person_joints(person: Person) -> dict[str, tuple[float, float, float]]:
    """3-D joints (and face points) in the body frame (l, u, f), height units, lowest point on the ground (u = 0)."""
    a, p = person.angles, person.proportions
    w, limb, hp = p["width"], p["limbs"], p["head"]
    lean = a["lean"]
    spine = (0.0, math.cos(lean), math.sin(lean))  # torso axis, leaning forwards by ``lean``
    j: dict[str, tuple[float, float, float]] = {"pelvis": (0.0, 0.0, 0.0)}
    j["neck"] = _along(j["pelvis"], spine, _SPINE)
    j["head"] = _along(j["neck"], spine, _NECK + _HEAD_RY * hp)
    for side, s in (("left", 1.0), ("right", -1.0)):
        k = side[0]
        j[f"{side}_shoulder"] = _along((s * _SHOULDER_W * w, 0.0, 0.0), spine, _SPINE - 0.02)
        upper = _limb_dir(s, a[f"{k}_sh_a"], a[f"{k}_sh_b"])
        j[f"{side}_elbow"] = _along(j[f"{side}_shoulder"], upper, _UPPER_ARM * limb)
        # The forearm keeps the upper arm's abduction and flexes forwards by the elbow angle.
        fore = _limb_dir(s, a[f"{k}_sh_a"], a[f"{k}_sh_b"] + a[f"{k}_el"])
        j[f"{side}_wrist"] = _along(j[f"{side}_elbow"], fore, _FOREARM * limb)
        j[f"{side}_hand"] = _along(j[f"{side}_wrist"], fore, _HAND * limb)
        j[f"{side}_hip"] = (s * _HIP_W * w, -0.02, 0.0)
        thigh = _limb_dir(s, a[f"{k}_hip_a"], a[f"{k}_hip_b"])
        j[f"{side}_knee"] = _along(j[f"{side}_hip"], thigh, _THIGH * limb)
        shin = _limb_dir(s, a[f"{k}_hip_a"] * 0.5, a[f"{k}_hip_b"] - a[f"{k}_knee"])
        j[f"{side}_ankle"] = _along(j[f"{side}_knee"], shin, _SHIN * limb)
        j[f"{side}_toe"] = _along(j[f"{side}_ankle"], (0.0, -_ANKLE_H * 0.8, _FOOT), 1.0)
    # Face points for the COCO keypoints (nose, eyes, ears) on the head ellipsoid.
    hd, hw, hr = _HEAD_RZ * hp, _HEAD_RX * hp, _HEAD_RY * hp
    head = j["head"]
    j["nose"] = _along(head, (0.0, -0.15 * hr, 0.95 * hd), 1.0)
    j["left_eye"] = _along(head, (0.38 * hw, 0.12 * hr, 0.78 * hd), 1.0)
    j["right_eye"] = _along(head, (-0.38 * hw, 0.12 * hr, 0.78 * hd), 1.0)
    j["left_ear"] = _along(head, (0.98 * hw, 0.0, -0.05 * hd), 1.0)
    j["right_ear"] = _along(head, (-0.98 * hw, 0.0, -0.05 * hd), 1.0)
    lowest = min(j["left_toe"][1], j["right_toe"][1]) - 0.01  # stand (or sit) on the ground
    return {name: (l, u - lowest, f) for name, (l, u, f) in j.items()}


def _project(person: Person, joints: dict[str, tuple]) -> tuple[dict[str, tuple], dict[str, float]]:
    """Orthographic projection after a yaw: image (x, y) in pixels and depth z (towards the camera, height units)."""
    c, s = math.cos(person.yaw), math.sin(person.yaw)
    h, x0, y0 = person.height, person.x, person.ground
    xy = {name: (x0 + h * (l * c + f * s), y0 - h * u) for name, (l, u, f) in joints.items()}
    depth = {name: -l * s + f * c for name, (l, u, f) in joints.items()}
    return xy, depth


def person_keypoints(person: Person, projected: tuple[dict, dict] | None = None) -> np.ndarray:
    """COCO-17 keypoints as (17, 4) ``x, y`` (pixels, continuous coordinates), ``z`` (depth), ``self_hidden``.

    ``self_hidden`` is 1 for face keypoints on the far side of the person's own head (a nose seen from behind).
    ``projected`` is the output of the projection when the caller has it already.
    """
    xy, z = projected if projected is not None else _project(person, person_joints(person))
    hd = _HEAD_RZ * person.proportions["head"]
    out = np.zeros((17, 4), dtype=np.float32)
    out[:, :2] = [xy[name] for name in KEYPOINT_NAMES]
    out[:, 2] = [z[name] for name in KEYPOINT_NAMES]
    # A face keypoint turned away from the camera is hidden by its own head.
    out[:5, 3] = out[:5, 2] - z["head"] < -0.15 * hd
    return out


# -------------------------------------------------------------------------------------------- primitives

_CAP = np.linspace(-math.pi / 2, math.pi / 2, 6)
_CAP_CS = np.stack([np.cos(_CAP), np.sin(_CAP), np.ones_like(_CAP)], axis=1)  # (6, 3): cos, sin, 1
_CAPSULE_BASIS = np.block([[_CAP_CS, np.zeros((6, 3))], [np.zeros((6, 3)), _CAP_CS]])  # (12, 6)
_CIRCLE = np.linspace(0, 2 * math.pi, 18, endpoint=False)
_CIRCLE_COS, _CIRCLE_SIN = np.cos(_CIRCLE), np.sin(_CIRCLE)


def _offset(p: tuple, a: tuple, b: tuple, t: float) -> tuple[float, float]:
    """``p + t (b - a)`` for 2-D points as plain float pairs (a person's parts need ~100 of these; numpy would
    cost more than the arithmetic)."""
    return p[0] + (b[0] - a[0]) * t, p[1] + (b[1] - a[1]) * t


def _shift(p: tuple, dx: float, dy: float) -> tuple[float, float]:
    """``p + (dx, dy)``."""
    return p[0] + dx, p[1] + dy


def capsule(p1, p2, r1: float, r2: float, round1: float = 1.0, round2: float = 1.0) -> np.ndarray:
    """Polygon (12, 2) of a tapered capsule from ``p1`` (radius ``r1``) to ``p2`` (radius ``r2``).

    ``round`` flattens an end cap (1: half disc, 0: square end), which turns the same shape into a trapezoid.
    """
    x1, y1 = float(p1[0]), float(p1[1])
    x2, y2 = float(p2[0]), float(p2[1])
    dx, dy = x2 - x1, y2 - y1
    length = math.hypot(dx, dy)
    dx, dy = (dx / length, dy / length) if length > 1e-9 else (0.0, 1.0)
    # Cap around p2 from -n through +d to +n, then around p1 from +n through -d to -n (n = d turned by 90 deg):
    # one (12, 6) @ (6, 2) product of cap cosines/sines with the cap axes and the end points.
    axes = np.array([r2 * round2 * dx, r2 * round2 * dy,  # p2's cap along d
                     -r2 * dy, r2 * dx,  # p2's cap along n
                     x2, y2,
                     -r1 * round1 * dx, -r1 * round1 * dy,  # p1's cap along -d
                     r1 * dy, -r1 * dx,  # p1's cap along -n
                     x1, y1]).reshape(6, 2)  # (a flat list converts faster than a nested one)
    return _CAPSULE_BASIS.dot(axes)  # (the same product as ``@``, with less call overhead)


def ellipse(centre, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    """Polygon (18, 2) of an ellipse with semi-axes ``rx``, ``ry`` rotated by ``angle`` (radians)."""
    c, s = math.cos(angle), math.sin(angle)
    x, y = rx * _CIRCLE_COS, ry * _CIRCLE_SIN
    out = np.empty((len(x), 2))
    out[:, 0] = centre[0] + c * x - s * y
    out[:, 1] = centre[1] + s * x + c * y
    return out


def hull_quad(a, b, c, d) -> np.ndarray:
    """Polygon (4, 2) through four corners."""
    return np.array([a, b, c, d], dtype=np.float64)


@dataclass
class Primitive:
    """One shaped region: drawn in ``key`` order (back to front) with ``segment`` and CIHP ``label``."""

    key: tuple[float, float]
    segment: int
    label: int
    polygon: np.ndarray = field(repr=False)


def _primitive_key(prim: Primitive) -> tuple[float, float]:
    return prim.key


def person_primitives(person: Person) -> tuple[list[Primitive], np.ndarray]:
    """The person's parts as polygons in drawing order, and their COCO-17 keypoints (see :func:`person_keypoints`).

    Depth keys: a primitive's key is ``(z, sub_order)`` with ``z`` the mean depth of the joints it spans (towards
    the camera is larger). Limbs get a small bias (arms slightly in front of the torso, legs slightly behind), so a
    front view draws arms over the torso's edges and the pelvis garment over the top of the thighs; a side view puts
    the near arm in front of the torso and the far arm behind it. Points are plain ``(x, y)`` float pairs until they
    become polygons (see :func:`_offset`).
    """
    xy, z = _project(person, person_joints(person))
    h = person.height
    o, p = person.outfit, person.proportions
    w = p["width"]
    cy, sy = math.cos(person.yaw), math.sin(person.yaw)
    prims: list[Primitive] = []

    def add(zkey: float, sub: float, segment: str, label: int, poly: np.ndarray) -> None:
        prims.append(Primitive((zkey, sub), SEGMENTS[segment], label, poly))

    # ---- torso: skin, neck, pelvis garment, upper garment, neckline, scarf (segment torso / pelvis)
    wsh = h * (_SHOULDER_W * w * abs(cy) + _TORSO_D * w * abs(sy))  # projected half-widths
    whip = h * (_HIP_W * w * abs(cy) + _TORSO_D * 0.9 * w * abs(sy))
    top = _offset(xy["neck"], xy["pelvis"], xy["neck"], 0.02)
    pelvis = xy["pelvis"]

    def spine(t: float) -> tuple[float, float]:  # the point a fraction t of the way from the top to the pelvis
        return _offset(top, top, pelvis, t)

    if o["crop_top"]:  # bare skin under the garment shows only below a cropped top
        add(0.0, 0.0, "torso", TORSO_SKIN, capsule(top, pelvis, wsh * 1.02, whip, 0.35, 0.3))
    add(0.0, 0.5, "torso", TORSO_SKIN, capsule(xy["neck"], xy["head"], h * 0.026 * w, h * 0.026 * w, 0.0, 0.5))
    upper, lower = o["upper"], o["lower"]
    garment = {"dress": DRESS, "coat": COAT}.get(upper, UPPER)
    if lower in ("pants", "shorts"):
        add(0.0, 1.0, "pelvis", PANTS, capsule(spine(0.82), _offset(pelvis, top, pelvis, 0.05), whip * 1.08,
                                                whip * 1.05, 0.0, 0.6))
    hem = spine(0.8 if o["crop_top"] else 1.02)
    add(0.0, 2.0, "torso", garment, capsule(spine(0.01), hem, wsh * 1.08, whip * 1.1, 0.4, 0.0))
    front = cy > 0.3  # the chest faces the camera
    if upper == "coat" and o["coat_open"] and front:
        # An open coat shows the shirt beneath: a strip down the middle.
        strip = capsule(spine(0.06), hem, wsh * 0.35 * cy, whip * 0.35 * cy, 0.0, 0.0)
        add(0.0, 2.5, "torso", UPPER, strip)
    if o["v_neck"] and front:
        add(0.0, 3.0, "torso", TORSO_SKIN, np.array([_shift(top, -wsh * 0.35 * cy, 0.0), spine(0.22),
                                                      _shift(top, wsh * 0.35 * cy, 0.0)]))
    if o["scarf"]:
        add(0.0, 4.0, "torso", SCARF, capsule(_shift(top, -wsh * 0.55, 0.0), _shift(top, wsh * 0.55, 0.0),
                                              h * 0.025, h * 0.025))
        if cy > -0.3:
            tail_x = sy * wsh * 0.3
            add(0.0, 4.1, "torso", SCARF, capsule(_shift(top, tail_x, 0.0),
                                                  _shift(spine(0.45), tail_x + wsh * 0.1, 0.0),
                                                  h * 0.018, h * 0.022, 1.0, 0.0))

    # ---- skirts, dresses, coat tails: a flared hull from the waist to a hem along the thighs (segment pelvis)
    tail = {"skirt": (SKIRT, o["skirt_len"]), "dress": (DRESS, o["skirt_len"])}.get(lower)
    if upper == "coat":
        tail = (COAT, o["coat_len"])
    if tail is not None:
        label, t = tail
        hem_l = _offset(xy["left_hip"], xy["left_hip"], xy["left_knee"], t)
        hem_r = _offset(xy["right_hip"], xy["right_hip"], xy["right_knee"], t)
        if t > 1.0:  # long: continue down the shins
            hem_l = _offset(xy["left_knee"], xy["left_knee"], xy["left_ankle"], t - 1.0)
            hem_r = _offset(xy["right_knee"], xy["right_knee"], xy["right_ankle"], t - 1.0)
        lo, hi = (hem_l, hem_r) if hem_l[0] <= hem_r[0] else (hem_r, hem_l)
        flare = whip * (0.35 + 0.35 * min(t, 1.2)) + h * 0.02
        waist = spine(0.78 if label != COAT else 0.85)
        poly = np.array([_shift(waist, -whip * 1.08, 0.0), _shift(lo, -flare, h * 0.01),
                         _shift(hi, flare, h * 0.01), _shift(waist, whip * 1.08, 0.0)])
        tz = max(z["left_knee"], z["right_knee"], z["left_hip"], z["right_hip"], 0.0) + 0.001
        add(tz, 0.0, "pelvis", label, poly)

    # ---- arms: skin, sleeve, hand or glove
    sleeve = float(o["sleeve"])
    for side, arm_label in (("left", L_ARM), ("right", R_ARM)):
        sh, el, wr, hand = xy[f"{side}_shoulder"], xy[f"{side}_elbow"], xy[f"{side}_wrist"], xy[f"{side}_hand"]
        r_up, r_fore = h * 0.030 * w ** 0.5, h * 0.023 * w ** 0.5
        zu = (z[f"{side}_shoulder"] + z[f"{side}_elbow"]) / 2 + 0.02
        zf = (z[f"{side}_elbow"] + z[f"{side}_wrist"]) / 2 + 0.021
        if sleeve < 1.0:  # (a long sleeve hides the whole arm: no need to draw skin under it)
            add(zu, 0.0, f"{side}_upper_arm", arm_label, capsule(sh, el, r_up * 1.15, r_fore * 1.05))
            add(zf, 0.0, f"{side}_forearm", arm_label, capsule(el, wr, r_fore * 1.05, r_fore * 0.85))
        if sleeve > 0:
            cover = min(sleeve, 1.0)
            add(zu, 1.0, f"{side}_upper_arm", garment,
                capsule(sh, _offset(sh, sh, el, min(cover * 1.0 + 0.05, 1.0)), r_up * 1.35, r_up * 1.25, 1.0, 0.0))
            if sleeve >= 1.0:
                add(zf, 1.0, f"{side}_forearm", garment, capsule(el, wr, r_up * 1.2, r_fore * 1.2, 1.0, 0.0))
        hand_label = GLOVE if o["gloves"] else arm_label
        add(zf, 2.0, f"{side}_forearm", hand_label, capsule(wr, hand, h * 0.017, h * 0.022))

    # ---- legs: skin, socks, trouser legs, shoes
    for side, leg_label, shoe_label in (("left", L_LEG, L_SHOE), ("right", R_LEG, R_SHOE)):
        hip, knee, ankle, toe = xy[f"{side}_hip"], xy[f"{side}_knee"], xy[f"{side}_ankle"], xy[f"{side}_toe"]
        r_th, r_kn, r_an = h * 0.048 * w ** 0.5, h * 0.032 * w ** 0.5, h * 0.022
        zt = (z[f"{side}_hip"] + z[f"{side}_knee"]) / 2 - 0.02
        zs = (z[f"{side}_knee"] + z[f"{side}_ankle"]) / 2 - 0.02
        if lower != "pants":  # (long trousers hide the whole leg)
            add(zt, 0.0, f"{side}_thigh", leg_label, capsule(hip, knee, r_th, r_kn))
            add(zs, 0.0, f"{side}_shin", leg_label, capsule(knee, ankle, r_kn, r_an))
        if o["socks"] and lower != "pants":
            add(zs, 1.0, f"{side}_shin", SOCKS, capsule(_offset(ankle, ankle, knee, 0.35), ankle, r_an * 1.15,
                                                        r_an * 1.15, 0.0, 1.0))
        if lower == "pants":
            add(zt, 2.0, f"{side}_thigh", PANTS, capsule(hip, knee, r_th * 1.15, r_kn * 1.25))
            add(zs, 2.0, f"{side}_shin", PANTS, capsule(knee, ankle, r_kn * 1.25, r_an * 1.45, 1.0, 0.0))
        elif lower == "shorts":
            add(zt, 2.0, f"{side}_thigh", PANTS, capsule(hip, _offset(hip, hip, knee, o["shorts_len"]), r_th * 1.2,
                                                         r_th * 1.15, 1.0, 0.0))
        # shoe: a capsule from heel to toe; seen from the front it shortens into a blob
        heel = _shift(_offset(ankle, toe, ankle, 0.2), 0.0, h * 0.012)
        add(z[f"{side}_ankle"] - 0.015, 0.0, f"{side}_foot", shoe_label,
            capsule(heel, toe, h * 0.026, h * 0.022))

    # ---- a stool under a sitting person: background (label 0) that still occludes the people behind it
    if person.pose == "sitting":
        hips_y = max(xy["left_hip"][1], xy["right_hip"][1]) + h * 0.04
        xs_ = [xy[n][0] for n in ("left_hip", "right_hip", "left_knee", "right_knee", "pelvis")]
        x0, x1 = min(xs_) - h * 0.03, max(xs_) + h * 0.03
        if x1 - x0 < h * 0.2:  # seen from the front the seat is as wide as the hips plus a margin
            mid = (x0 + x1) / 2
            x0, x1 = mid - h * 0.1, mid + h * 0.1
        ground = person.ground
        seat_z = -10.0  # behind all of this person's parts
        add(seat_z, 0.0, "seat", 0, hull_quad((x0, hips_y), (x1, hips_y), (x1, hips_y + h * 0.04),
                                              (x0, hips_y + h * 0.04)))
        for lx in (x0 + h * 0.015, x1 - h * 0.015):
            add(seat_z, 1.0, "seat", 0, capsule((lx, hips_y + h * 0.03), (lx, ground), h * 0.012, h * 0.012,
                                                0.0, 0.0))

    # ---- head: long hair behind, then head hair, face, fringe, sunglasses, hat
    hp = p["head"]
    rx = h * hp * (_HEAD_RX * abs(cy) + _HEAD_RZ * abs(sy))
    ry = h * hp * _HEAD_RY
    c = xy["head"]
    fx = sy  # image-x component of the facing direction
    if o["hair"] == "long":
        hz = z["head"] - 0.05 * cy
        length = h * (0.16 + 0.1 * (hp - 0.92))
        add(hz, -1.0, "hair_back", HAIR, capsule(_shift(c, -fx * rx * 0.3, 0.0), _shift(c, -fx * rx * 0.6, length),
                                                 rx * 1.1, rx * 0.8, 1.0, 0.6))
    hz = z["head"] + 0.06
    if o["hair"] != "bald":
        add(hz, 0.0, "head", HAIR, ellipse(_shift(c, -fx * rx * 0.12, -ry * 0.1), rx * 1.06, ry * 1.02))
    else:
        add(hz, 0.0, "head", FACE, ellipse(c, rx, ry))
    face_amount = (cy + 0.35) / 1.35  # 1 facing the camera, 0 from behind
    if face_amount > 0.05:
        fc = _shift(c, fx * rx * 0.32, ry * 0.12)
        add(hz, 1.0, "head", FACE, ellipse(fc, rx * (0.45 + 0.45 * face_amount), ry * 0.86))
        if abs(fx) > 0.5:  # profile: the nose and chin stick out on the facing side
            add(hz, 1.1, "head", FACE, ellipse(_shift(c, fx * rx * 0.9, ry * 0.2), rx * 0.22, ry * 0.22))
        if o["hair"] != "bald" and cy > 0.2:
            add(hz, 2.0, "head", HAIR, ellipse(_shift(c, fx * rx * 0.1, -ry * 0.72), rx * 0.92, ry * 0.32))
        if o["sunglasses"] and cy > -0.1:
            eye_y = c[1] - ry * 0.08
            gw = rx * (0.3 + 0.5 * max(cy, 0.0))
            gx = c[0] + fx * rx * 0.45
            add(hz, 3.0, "head", SUNGLASSES, capsule((gx - gw, eye_y), (gx + gw, eye_y), ry * 0.17, ry * 0.17))
    if o["hat"]:
        crown = _shift(c, 0.0, -ry * 0.45)
        add(hz, 4.0, "head", HAT, capsule(_shift(crown, -rx * 1.05, 0.0), _shift(crown, rx * 1.05, 0.0),
                                          ry * 0.12, ry * 0.12))
        add(hz, 4.1, "head", HAT, ellipse(_shift(crown, 0.0, -ry * 0.2), rx * 0.95, ry * 0.55))
    prims.sort(key=_primitive_key)
    return prims, person_keypoints(person, (xy, z))


# ---------------------------------------------------------------------------------------------- clutter


@dataclass
class Clutter:
    """A background (or foreground) object: a polygon with a pattern."""

    polygon: np.ndarray
    pattern: Pattern
    foreground: bool = False


def _clutter_shape(rng: Draws, size: int, foreground: bool) -> np.ndarray:
    """A clutter polygon: an ellipse, a limb-like stick, a rotated box or a blob; in the foreground, a post rising
    from the bottom edge or a box in a lower corner."""
    cx, cy = rng.uniform(-0.1, 1.1) * size, rng.uniform(0.0, 1.05) * size
    r = size * rng.uniform(0.03, 0.22)
    kind = rng.integers(4)
    if foreground:  # poles and posts entering from the bottom edge, or a box in the corner
        if rng.random() < 0.6:
            x = rng.uniform(0, size)
            return capsule((x, size * 1.1), (x + rng.uniform(-0.1, 0.1) * size, size * rng.uniform(0.2, 0.7)),
                           size * rng.uniform(0.02, 0.05), size * rng.uniform(0.015, 0.04), 0.0, 1.0)
        x0 = rng.uniform(-0.1, 0.8) * size
        return hull_quad((x0, size * 1.1), (x0, size * rng.uniform(0.7, 0.9)),
                         (x0 + size * rng.uniform(0.1, 0.3), size * rng.uniform(0.7, 0.9)),
                         (x0 + size * 0.3, size * 1.1))
    if kind == 0:
        return ellipse((cx, cy), r, r * rng.uniform(0.4, 1.2), rng.uniform(0, math.pi))
    if kind == 1:  # limb-like stick in a skin or cloth colour
        a = rng.uniform(0, 2 * math.pi)
        return capsule((cx, cy), (cx + 2 * r * math.cos(a), cy + 2 * r * math.sin(a)), r * 0.25, r * 0.18)
    if kind == 2:  # rotated rectangle
        return capsule((cx, cy - r), (cx, cy + r), r * rng.uniform(0.3, 1.0), r * rng.uniform(0.3, 1.0), 0.0, 0.0)
    angles = np.sort(rng.uniform(0, 2 * math.pi, 7))  # star-convex blob
    radii = r * rng.uniform(0.5, 1.0, 7)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def sample_clutter(rng: np.random.Generator | Draws, size: int) -> list[Clutter]:
    """Background objects in part-like colours, and sometimes one foreground occluder (drawn over people)."""
    rng = draws(rng)
    items = []
    for _ in range(int(rng.integers(4, 15))):
        items.append(Clutter(_clutter_shape(rng, size, False), _pattern(rng, _any_colour(rng), size * 0.6)))
    if rng.random() < 0.25:
        items.append(Clutter(_clutter_shape(rng, size, True), _pattern(rng, _any_colour(rng), size * 0.6), True))
    return items


# ------------------------------------------------------------------------------------------------ scenes


@dataclass
class Scene:
    """Everything needed to draw one image: people (far to near), clutter and photometric settings."""

    size: int
    people: list[Person]
    clutter: list[Clutter]
    photo: dict[str, object]


def _place(people: list[Person], rng: Draws, size: int, crowding: float, candidates: int = 16) -> None:
    """Choose each person's depth and position.

    Depth ``d`` in [0, 1] sets the scale (standing height ``0.2 .. 0.95`` of the image, a 4.75x range, geometric
    in ``d``) and the ground line (near people stand lower; the nearest have their feet cut by the bottom edge).
    Then each person draws ``candidates`` horizontal positions (reaching 8% beyond the left and right edges, so
    people are cut there too); the chosen one is the one whose overlap with the people placed before (the share of
    the person's box covered by their boxes, summed) is closest to ``0.9 * crowding``: ``crowding = 0`` picks the
    emptiest spot, ``crowding = 1`` the most crowded. Depths, sizes and candidates are drawn the same way for every
    ``crowding``, so a crowding sweep moves the same people, at the same sizes, sideways.
    """
    placed: list[tuple[float, float, float, float]] = []
    target = 0.9 * crowding
    for person in people:
        d = rng.uniform(0, 1)
        height = size * 0.2 * (0.95 / 0.2) ** d * rng.uniform(0.93, 1.07)
        ground = size * (0.5 + 0.58 * d + rng.uniform(-0.04, 0.04))
        # a person may be cut by the left or right edge, but their torso's centre line stays near the image
        xs = _clip(rng.uniform(-0.08, 1.08, candidates) * size, -0.06 * height, size + 0.06 * height)
        half = height * (0.15 if person.view == "side" else 0.2)
        top = ground - height * (0.75 if person.pose == "sitting" else 1.0)
        score = np.zeros(candidates)
        for bx1, by1, bx2, by2 in placed:
            iw = np.maximum(np.minimum(xs + half, bx2) - np.maximum(xs - half, bx1), 0.0)
            ih = max(min(ground, by2) - max(top, by1), 0.0)
            score += iw * ih / (2 * half * (ground - top))
        best = int(np.argmin(np.abs(np.minimum(score, 1.5) - target)))
        person.depth, person.height, person.x, person.ground = d, height, float(xs[best]), ground
        _fit_patterns(person)
        placed.append((person.x - half, top, person.x + half, ground))
    people.sort(key=lambda p: p.depth)  # painter's order: far first


def _fit_patterns(person: Person) -> None:
    """Scale the person's pattern periods (drawn for a 100-pixel person) to their height in pixels."""
    for pat in person.patterns.values():
        pat.period = max(2.0, pat.period * person.height / 100.0)


def _sample_photo(rng: Draws, size: int) -> dict:
    """Background colours, lighting, blur and noise of one image."""
    photo = {
        "wall": _any_colour(rng) * rng.uniform(0.6, 1.0),
        "floor": _any_colour(rng) * rng.uniform(0.5, 0.9),
        "horizon": rng.uniform(0.3, 0.65),  # Python floats: NumPy scalars would promote float32 images to float64
        "gain": rng.uniform(0.75, 1.1),
        "light": (rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)),
        "edge_dark": rng.uniform(0.12, 0.35),
        "noise": rng.uniform(0.004, 0.03),
        "blur": rng.random() < 0.5,
        "noise_offset": (rng.integers(size), rng.integers(size)),
        "seat": _pattern(rng, _any_colour(rng), size * 0.5, kinds=(0.6, 0.2, 0.1, 0.1)),
    }
    photo["background"] = Pattern(photo["wall"], photo["floor"], GRADIENT)  # blends wall into floor
    return photo


def sample_scene(size: int, num_people: int, crowding: float, rng_people: np.random.Generator | Draws,
                 rng_place: np.random.Generator | Draws, rng_photo: np.random.Generator | Draws) -> Scene:
    """A full scene. Three independent random streams: people (pose, outfit), placement, and photometrics."""
    rng_people, rng_place, rng_photo = draws(rng_people), draws(rng_place), draws(rng_photo)
    people = [sample_person(rng_people) for _ in range(num_people)]
    _place(people, rng_place, size, crowding)
    clutter = sample_clutter(rng_photo, size)
    return Scene(size=size, people=people, clutter=clutter, photo=_sample_photo(rng_photo, size))


def solo_scene(pose: str | None = None, view: str | None = None, yaw: float | None = None, size: int = 128,
               seed: int = 0, clutter: bool = False) -> Scene:
    """One person, centred and 80% of the image tall, on a plain background unless ``clutter`` (for figures)."""
    rng = Draws(np.random.default_rng([0x50105, seed]))
    person = sample_person(rng, pose=pose, view=view, yaw=yaw)
    person.depth, person.height, person.x, person.ground = 0.5, 0.8 * size, size / 2, 0.92 * size
    _fit_patterns(person)
    photo = _sample_photo(rng, size)
    if not clutter:
        grey = np.full(3, 0.82, np.float32)
        photo.update(wall=grey, floor=grey * 0.85, background=Pattern(grey, grey * 0.85, GRADIENT), noise=0.0,
                     blur=False, light=(0.0, 0.0), gain=1.0)
    return Scene(size=size, people=[person], clutter=sample_clutter(rng, size) if clutter else [], photo=photo)


# ----------------------------------------------------------------------------------------- rasterisation


@dataclass
class Raster:
    """The z-buffered code map of a scene and per-person geometry.

    ``code``: int32 (H, W), ``slot << 10 | segment << 5 | label`` (slot 0 = background/clutter, people 1..P);
    ``codes``: every code drawn (some may be hidden).
    ``keypoints``: (P, 17, 4) x, y, z, self-hidden. ``amodal_area`` / ``amodal_in_image``: pixels each person covers
    when drawn alone, on an unbounded canvas and inside the image. ``amodal_boxes``: (P, 4) xyxy of the unoccluded
    person (may extend beyond the image).
    """

    code: np.ndarray
    codes: np.ndarray
    keypoints: np.ndarray
    amodal_area: np.ndarray
    amodal_in_image: np.ndarray
    amodal_boxes: np.ndarray


def rasterize(scene: Scene, people: list[int] | None = None, clutter: bool = True) -> Raster:
    """Draw the scene back to front (painter's algorithm = z-buffer with depth-sorted layers).

    ``people`` restricts drawing to those indices of ``scene.people`` (the chapter draws people one at a time);
    ``clutter=False`` leaves the background empty.
    """
    size = scene.size
    pad = size // 2 + 8  # people may stand partly outside the image; the padding measures their full area
    canvas = Image.new("I", (size + 2 * pad, size + 2 * pad), 0)
    draw = ImageDraw.Draw(canvas)
    shift = pad - 0.5  # continuous coordinates (pixel i covers [i, i+1)) -> PIL pixel-centre coordinates

    def poly(points: np.ndarray) -> list[float]:
        return (points + shift).ravel().tolist()

    used = {0}
    if clutter:
        for k, item in enumerate(scene.clutter[:MAX_CLUTTER]):
            if not item.foreground:
                draw.polygon(poly(item.polygon), fill=(k + 1) << SEGMENT_SHIFT)
                used.add((k + 1) << SEGMENT_SHIFT)
    chosen = range(len(scene.people)) if people is None else people
    num = len(scene.people)
    keypoints = np.zeros((num, 17, 4), dtype=np.float32)
    area = np.zeros(num, dtype=np.int64)
    in_image = np.zeros(num, dtype=np.int64)
    boxes = np.zeros((num, 4), dtype=np.float32)
    for k in chosen:
        prims, kps = person_primitives(scene.people[k])
        keypoints[k] = kps
        slot = (k + 1) << SLOT_SHIFT
        every = np.concatenate([prim.polygon for prim in prims])
        flat, start = poly(every), 0  # all of the person's vertices converted at once, then sliced per part
        for prim in prims:
            fill = (SEAT_SEGMENT << SEGMENT_SHIFT if prim.segment == SEAT_SEGMENT
                    else slot | prim.segment << SEGMENT_SHIFT | prim.label)
            end = start + 2 * len(prim.polygon)
            draw.polygon(flat[start:end], fill=fill)
            start = end
            used.add(fill)
        lo, hi = every.min(0).tolist(), every.max(0).tolist()
        # Just after drawing person k (and before anyone nearer), every pixel of its silhouette holds its slot:
        # counting them gives the amodal area, the denominator of the visible fraction.
        extent = size + 2 * pad
        x0, y0 = (min(max(math.floor(v) + pad - 2, 0), extent) for v in lo)  # PIL may fill a pixel past the vertices
        x1, y1 = (min(max(math.ceil(v) + pad + 2, 0), extent) for v in hi)
        window = np.asarray(canvas.crop((x0, y0, x1, y1)))
        mine = (window >> SLOT_SHIFT) == k + 1
        area[k] = np.count_nonzero(mine)
        ix0, iy0 = max(pad - x0, 0), max(pad - y0, 0)
        ix1, iy1 = max(min(pad + size - x0, x1 - x0), 0), max(min(pad + size - y0, y1 - y0), 0)
        in_image[k] = np.count_nonzero(mine[iy0:iy1, ix0:ix1])
        if area[k]:
            rows, cols = np.nonzero(mine.any(1))[0], np.nonzero(mine.any(0))[0]
            boxes[k] = (cols[0] + x0 - pad, rows[0] + y0 - pad, cols[-1] + x0 - pad + 1, rows[-1] + y0 - pad + 1)
    if clutter:
        for k, item in enumerate(scene.clutter[:MAX_CLUTTER]):
            if item.foreground:
                draw.polygon(poly(item.polygon), fill=(k + 1) << SEGMENT_SHIFT)
                used.add((k + 1) << SEGMENT_SHIFT)
    code = np.asarray(canvas.crop((pad, pad, pad + size, pad + size)))
    return Raster(code=code, codes=np.array(sorted(used), dtype=np.int64), keypoints=keypoints, amodal_area=area,
                  amodal_in_image=in_image, amodal_boxes=boxes)


def decode(code: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a code map into (slot, segment, label) maps."""
    return code >> SLOT_SHIFT, (code >> SEGMENT_SHIFT) & 31, code & 31


# -------------------------------------------------------------------------------------------- appearance


_CACHE: dict[tuple, np.ndarray | dict[str, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as a (1, W) row and an (H, 1) column, float32 (cached per size)."""
    key = ("grid", size)
    if key not in _CACHE:
        _CACHE[key] = np.arange(size, dtype=np.float32) + 0.5
    x = _CACHE[key]
    return x[None, :], x[:, None]


def _pixel_index(size: int) -> np.ndarray:
    """The flat indices ``0 .. size * size - 1`` of an image's pixels (cached per size)."""
    key = ("index", size)
    if key not in _CACHE:
        _CACHE[key] = np.arange(size * size)
        _CACHE[key].flags.writeable = False  # shared by every call
    return _CACHE[key]


def _noise_bank(size: int) -> np.ndarray:
    """A fixed (3, size + 64, size + 64) tile of Gaussian noise; each image reads a window at its own offset.

    Drawing fresh noise for every pixel costs more than everything else in :func:`shade`; a shifted window of one
    fixed tile is just as unstructured to a network and keeps rendering deterministic.
    """
    key = ("noise", size)
    if key not in _CACHE:
        _CACHE[key] = np.random.default_rng(size).standard_normal((3, size + 64, size + 64), dtype=np.float32)
    return _CACHE[key]


def _smooth_bank(size: int, period: float) -> np.ndarray:
    """A fixed (2 size, 2 size) tile of smooth noise (about [-1, 1]) with features ``period`` pixels apart.

    Made once per (size, period) by bilinearly upsampling a coarse Gaussian grid; images read windows of it at
    their own offsets (``size`` x ``size`` of them), which is much cheaper than making new noise per image.
    """
    key = ("smooth", size, period)
    if key not in _CACHE:
        side = 2 * size
        cells = max(2, int(round(side / period)))
        grid = np.random.default_rng([size, int(period * 100)]).standard_normal((cells + 1, cells + 1))
        t = np.linspace(0, cells, side)
        i = np.minimum(t.astype(np.int64), cells - 1)
        f = t - i
        rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
        field = (rows[:, i] * (1 - f)[None] + rows[:, i + 1] * f[None]) * 0.5
        _CACHE[key] = np.ascontiguousarray(field, dtype=np.float32)  # C order: windows are read row by row
    return _CACHE[key]


def _banks(size: int) -> dict[str, np.ndarray]:
    """The per-pixel functions of the smooth banks that :func:`shade` reads, evaluated once per size.

    Each is an elementwise function of a bank, so a window of it holds exactly what the function of the window
    would: ``wall`` = ``1 + 0.15 s`` (wall-to-floor wobble), ``light`` = ``1 + 0.08 s`` (slow illumination
    change), both of the ``size / 10`` bank ``s``, and ``mottle`` = ``clip(0.5 + m, 0, 1)`` of the 8-pixel bank.
    """
    key = ("banks", size)
    if key not in _CACHE:
        slow = _smooth_bank(size, size / 10)
        _CACHE[key] = {"wall": 1 + 0.15 * slow, "light": 1 + 0.08 * slow,
                       "mottle": np.clip(0.5 + _smooth_bank(size, 8.0), 0, 1)}
    return _CACHE[key]


# Columns of the per-pattern record that shade gathers for each pixel it textures: the first colour, the second
# minus the first, and the kind.
_C1, _DC, _KIND = slice(0, 3), slice(3, 6), 6


def _code_tables(scene: Scene, codes: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Map every code to its pattern: (lut, tables) with ``lut[code]`` an index into the pattern tables.

    Codes of one garment share a pattern (a person's sleeve and torso, their two shoes), so the tables hold the
    few dozen distinct patterns of the scene, not the codes. ``tables["record"]`` has one (8,) float32 row per
    pattern: first colour, second minus first colour, kind, padding. Gathering one 32-byte row per pixel costs
    about what gathering one number does, so a single gather serves all seven values.
    """
    skin_labels = {TORSO_SKIN, FACE, L_ARM, R_ARM, L_LEG, R_LEG}
    people, clutter, seat = scene.people, scene.clutter, scene.photo["seat"]
    patterns: list[Pattern] = [scene.photo["background"]]
    index: dict[int, int] = {id(patterns[0]): 0}
    rows = []
    for code in codes.tolist():
        slot = code >> SLOT_SHIFT
        if slot:
            label = code & 31
            pat = people[slot - 1].patterns[SKIN_KEY if label in skin_labels else label]
        else:
            segment = (code >> SEGMENT_SHIFT) & 31
            pat = patterns[0] if segment == 0 else seat if segment == SEAT_SEGMENT else clutter[segment - 1].pattern
        m = index.get(id(pat))
        if m is None:
            m = index[id(pat)] = len(patterns)
            patterns.append(pat)
        rows.append(m)
    lut = np.zeros(int(codes.max()) + 1, dtype=np.intp)
    lut[codes] = rows
    c1 = np.array([p.colour for p in patterns], np.float32)
    c2 = np.array([p.colour2 for p in patterns], np.float32)
    kind = np.array([p.kind for p in patterns], np.int8)
    record = np.zeros((len(patterns), 8), np.float32)
    record[:, _C1], record[:, _DC], record[:, _KIND] = c1, c2 - c1, kind
    tables = {
        "record": record,
        "kind": kind,
        "fa": np.array([2 * math.pi / p.period * math.cos(p.angle) for p in patterns], np.float32),
        "fb": np.array([2 * math.pi / p.period * math.sin(p.angle) for p in patterns], np.float32),
        "phase": np.array([p.phase for p in patterns], np.float32),
    }
    return lut, tables


def _blur_pass(x: np.ndarray, y: np.ndarray, step: int) -> None:
    """``y = x / 2 + (x[i - step] + x[i + step]) / 4`` over the flat arrays, the first and last ``step`` copied.

    Evaluated as ``((x[i - step] + x[i + step]) / 2 + x) / 2`` in place: halving is exact in floating point, so
    both forms round identically, and this one needs no temporary arrays.
    """
    inner = y[step:-step]
    np.add(x[:-2 * step], x[2 * step:], out=inner)
    inner *= 0.5
    inner += x[step:-step]
    inner *= 0.5
    y[:step], y[-step:] = x[:step], x[-step:]


def _blur(x: np.ndarray) -> np.ndarray:
    """[1, 2, 1] / 4 blur of a C-ordered (..., H, W) float array along both image axes, edges replicated.

    Both passes run over the flat array (contiguous slices are several times faster than row-by-row ones); the
    horizontal pass also mixes each row's last pixel with the next row's first, and those border columns are then
    set to their replicated values.
    """
    width = x.shape[-1]
    y = np.empty_like(x)
    for plane_in, plane_out in zip(x.reshape(-1, x.shape[-2] * width), y.reshape(-1, x.shape[-2] * width)):
        _blur_pass(plane_in, plane_out, width)  # vertical: neighbours one row apart, within each plane
    z = np.empty_like(x)
    _blur_pass(y.reshape(-1), z.reshape(-1), 1)  # horizontal
    z[..., 0], z[..., -1] = y[..., 0], y[..., -1]
    return z


def _edge_darkening(code: np.ndarray, strength: float) -> np.ndarray:
    """``1 - strength * blur(edge)`` (float32), where ``edge`` marks pixels with a neighbour of another code.

    ``edge`` is 0 or 1, so its [1, 2, 1] blur (:func:`_blur`) is a count of sixteenths; counting in bytes gives
    exactly the same values as blurring in floating point, for a fraction of the cost. As in :func:`_blur`, the
    work runs over the flat map and the row ends are then fixed.
    """
    width = code.shape[1]
    flat = code.reshape(-1)
    edge = np.zeros(flat.shape, np.uint8)
    dx = flat[1:] != flat[:-1]
    dx[width - 1::width] = False  # a row's last pixel and the next row's first are not neighbours
    edge[1:] |= dx
    edge[:-1] |= dx
    dy = flat[width:] != flat[:-width]
    edge[width:] |= dy
    edge[:-width] |= dy
    quarters = np.empty_like(edge)  # 4 x the vertical pass: x[i - W] + 2 x[i] + x[i + W]
    np.add(edge[:-2 * width], edge[2 * width:], out=quarters[width:-width])
    quarters[width:-width] += edge[width:-width]
    quarters[width:-width] += edge[width:-width]
    quarters[:width], quarters[-width:] = edge[:width] * 4, edge[-width:] * 4
    sixteenths = np.empty_like(edge)  # 16 x both passes
    np.add(quarters[:-2], quarters[2:], out=sixteenths[1:-1])
    sixteenths[1:-1] += quarters[1:-1]
    sixteenths[1:-1] += quarters[1:-1]
    sixteenths, quarters = sixteenths.reshape(code.shape), quarters.reshape(code.shape)
    sixteenths[:, 0], sixteenths[:, -1] = quarters[:, 0] * 4, quarters[:, -1] * 4
    # (k / 16) * strength, computed as k * (strength / 16): scaling by 1/16 is exact, so both round the same
    factor = np.multiply(sixteenths, np.float32(strength) / 16, dtype=np.float32)
    return np.subtract(1, factor, out=factor)


def shade(scene: Scene, code: np.ndarray, codes: np.ndarray | None = None,
          stages: bool = False) -> np.ndarray | dict[str, np.ndarray]:
    """Turn a code map into an RGB image (3, H, W) float32 in [0, 1].

    Each code (one garment of one person, one clutter object, the background) has two colours mixed by a pattern:
    ``mix = [sin(u) > 0]`` (stripes), ``[sin(u) sin(v) > 0]`` (checks), smooth noise (mottled) or the vertical
    wall-to-floor blend (background), where ``(u, v)`` are the pixel's coordinates rotated by the pattern's angle
    and scaled by its frequency; the pixel is ``first colour + mix * (second - first)``. The background covers
    two thirds of a typical image with one pattern, so it is computed as whole planes; the other pixels gather their
    code's parameters and evaluate their own pattern only. Then illumination (gain, a linear gradient, slow
    variation), darkening near region boundaries (parts look rounded; occlusion boundaries show), an optional
    [1, 2, 1] blur, sensor noise, and 8-bit quantisation, as a camera delivers. ``codes`` lists the codes present
    (as :class:`Raster` records them); with ``stages=True`` a dict of (H, W, 3) images ``flat``, ``textured``,
    ``lit`` and ``final`` is returned instead.
    """
    size = code.shape[0]
    photo = scene.photo
    codes = np.unique(code) if codes is None else np.asarray(codes)
    if len(codes) == 0 or codes[0] != 0:  # the background's code 0 leads the tables
        codes = np.union1d(codes, [0])
    lut, t = _code_tables(scene, codes.astype(np.int64))
    xs, ys = _grid(size)
    banks = _banks(size)
    ox, oy = photo["noise_offset"]
    out = {}

    # The wall-to-floor blend, as a plane: the mix of every GRADIENT pixel.
    blend = np.clip((ys / size - photo["horizon"]) * 6 + 0.5, 0, 1) * banks["wall"][oy:oy + size, ox:ox + size]
    # Code 0 (the background pattern) is drawn as whole planes when it is a gradient, as it always is in SynthCrowd;
    # the pixels `at` of every other code (or of all codes otherwise) gather their code's record.
    flat_code = code.reshape(-1)
    planar = t["record"][0, _KIND] == GRADIENT
    at = _pixel_index(size)
    if planar:
        at = at[flat_code != 0]  # (cheaper than np.flatnonzero)
    rows = at // size
    cols = at - rows * size
    pattern = np.take(lut, np.take(flat_code, at).astype(np.intp))  # (an intp index is gathered fastest)
    record = np.take(t["record"], pattern, axis=0)  # (len(at), 8), columns _C1, _DC, _KIND
    kind = record[:, _KIND]
    mix = np.zeros(len(at), np.float32)  # plain patterns keep mix 0
    gradient = kind == GRADIENT
    if gradient.any():
        mix[gradient] = np.take(blend, at[gradient])
    mottled = kind == MOTTLED
    if mottled.any():
        # the (2 size)-wide bank read at row ox + r, column oy + c: a flat index is cheaper than a 2-D one
        spot = at[mottled] + rows[mottled] * size + (ox * 2 * size + oy)
        mix[mottled] = np.take(banks["mottle"], spot)
    waves = np.flatnonzero((kind == STRIPES) | (kind == CHECKS))
    if len(waves):
        wave = np.take(pattern, waves)
        centres = xs.ravel()  # pixel-centre coordinates, the same along x and y
        x, y = np.take(centres, cols[waves]), np.take(centres, rows[waves])
        fa, fb = np.take(t["fa"], wave), np.take(t["fb"], wave)  # frequency * (cos, sin) of the angle
        su = np.sin(x * fa + y * fb + np.take(t["phase"], wave))
        on = su > 0
        checks = kind[waves] == CHECKS
        if checks.any():
            on[checks] = su[checks] * np.sin(y[checks] * fa[checks] - x[checks] * fb[checks]) > 0
        mix[waves] = on
    image = np.empty((3, size, size), np.float32)
    background = t["record"][0]
    for ch in range(3):  # channel planes: broadcasting over a trailing axis of 3 would be far slower
        plane = image[ch].reshape(-1)
        if planar:
            np.multiply(blend.reshape(-1), background[_DC.start + ch], out=plane)
            plane += background[ch]
        plane[at] = mix * record[:, _DC.start + ch] + record[:, ch]
    if stages:
        out["flat"] = image.copy()  # the first colour alone, but for the wall-to-floor blend
        for ch in range(3):
            out["flat"][ch].reshape(-1)[at[~gradient]] = record[~gradient, ch]
        out["textured"] = image.copy()

    # Illumination: gain, a linear gradient and slow variation, then darkening near region boundaries.
    lx, ly = photo["light"]
    light = 1 + lx * (xs / size - 0.5) + ly * (ys / size - 0.5)
    light *= photo["gain"]
    light *= banks["light"][oy:oy + size, ox:ox + size]
    light *= _edge_darkening(code, photo["edge_dark"])
    image *= light
    if stages:
        out["lit"] = image.copy()
    if photo["blur"]:
        image = _blur(image)
    ox, oy = ox % 64, oy % 64
    image += _noise_bank(size)[:, oy:oy + size, ox:ox + size] * photo["noise"]
    np.clip(image, 0, 1, out=image)
    image *= 255  # 8-bit quantisation, in place
    np.round(image, out=image)
    image *= 1 / 255
    if stages:
        out["final"] = image
        return {k: np.ascontiguousarray(v.clip(0, 1).transpose(1, 2, 0)) for k, v in out.items()}
    return image
