"""Instance CRF (Li, Arnab & Torr, BMVC 2017, §3.2–3.4), its matched loss (§3.3) and OHEM."""

import math

import pytest
import torch

from hparse.ops import ohem
from hparse.ops.instance_crf import (
    EXACT_MAX_PIXELS,
    CRFOptions,
    InstanceCRF,
    crf_channel,
    crf_instances,
    crf_prediction,
    crf_semantic,
    crf_to_person_parts,
    default_pairwise_weights,
    hungarian_matched_loss,
    instance_crf,
    instance_unary,
    match_segments,
    pairwise_messages,
    squash_detection_scores,
)


def make_scene(height=24, width=28, num_parts=3, dtype=torch.float32, seed=0, noise=0.01):
    """Two people (each: num_parts horizontal bands) on a flat background; Q = softened ground truth."""
    g = torch.Generator().manual_seed(seed)
    inst = torch.zeros(height, width, dtype=torch.long)
    sem = torch.zeros(height, width, dtype=torch.long)
    people = [(3, 2, 12, 20), (15, 4, 25, 22)]  # x1, y1, x2, y2 (exclusive)
    colours = torch.tensor([[0.5, 0.6, 0.4], [0.8, 0.2, 0.1], [0.1, 0.3, 0.9]], dtype=dtype)
    image = colours[0][:, None, None].expand(3, height, width).clone()
    for k, (x1, y1, x2, y2) in enumerate(people, start=1):
        inst[y1:y2, x1:x2] = k
        bands = torch.linspace(y1, y2, num_parts + 1).round().long()
        for j in range(num_parts):
            sem[bands[j] : bands[j + 1], x1:x2] = j + 1
        image[:, y1:y2, x1:x2] = (colours[k] * (0.8 + 0.2 * torch.arange(num_parts + 1, dtype=dtype)[sem[y1:y2, x1:x2]]
                                                / num_parts)[..., None]).permute(2, 0, 1)
    image = (image + noise * torch.randn(image.shape, generator=g, dtype=dtype)).clamp(0, 1)
    logits = 4.0 * torch.nn.functional.one_hot(sem, num_parts + 1).permute(2, 0, 1).to(dtype)
    logits = logits + torch.randn(logits.shape, generator=g, dtype=dtype)
    Q = torch.softmax(logits, 0)
    boxes = torch.tensor([[x1, y1, x2, y2] for x1, y1, x2, y2 in people], dtype=dtype)
    scores = torch.tensor([0.9, 0.7], dtype=dtype)
    return dict(Q=Q, boxes=boxes, scores=scores, image=image, instances=inst, semantic=sem, num_parts=num_parts)


@pytest.fixture
def scene():
    return make_scene()


# --------------------------------------------------------------------------------------------- shapes and sums


@pytest.mark.parametrize("method", ["exact", "fast", "lattice"])
@pytest.mark.parametrize("num_det", [0, 1, 5])
def test_shapes_and_probabilities(scene, method, num_det):
    P = scene["num_parts"]
    g = torch.Generator().manual_seed(num_det)
    xy = torch.rand(num_det, 2, generator=g) * 12
    boxes = torch.cat([xy, xy + 4 + torch.rand(num_det, 2, generator=g) * 10], 1)
    boxes = torch.minimum(boxes, torch.tensor([28.0, 24.0, 28.0, 24.0]))
    scores = torch.rand(num_det, generator=g)
    out = instance_crf(scene["Q"], boxes, scores, scene["image"], iters=3, method=method)
    H, W = scene["Q"].shape[1:]
    assert out.shape == (1 + num_det * P, H, W)
    assert (out >= 0).all()
    torch.testing.assert_close(out.sum(0), torch.ones(H, W), atol=1e-5, rtol=0)
    if num_det == 0:
        torch.testing.assert_close(out, torch.ones(1, H, W))


def test_batched_form_equals_per_image(scene):
    other = make_scene(seed=3)
    Q = torch.stack([scene["Q"], other["Q"]])
    image = torch.stack([scene["image"], other["image"]])
    boxes = [scene["boxes"], other["boxes"][:1]]
    scores = [scene["scores"], other["scores"][:1]]
    outs = instance_crf(Q, boxes, scores, image, iters=2)
    assert [o.shape[0] for o in outs] == [1 + 2 * 3, 1 + 3]
    for b in range(2):
        single = instance_crf(Q[b], boxes[b], scores[b], image[b], iters=2)
        torch.testing.assert_close(outs[b], single)


@pytest.mark.parametrize("method", ["exact", "fast", "lattice"])
def test_permuting_detections_permutes_channels(scene, method):
    P = scene["num_parts"]
    boxes = torch.cat([scene["boxes"], torch.tensor([[0.0, 0.0, 8.0, 6.0]])])
    scores = torch.cat([scene["scores"], torch.tensor([0.4])])
    perm = torch.tensor([2, 0, 1])
    out = instance_crf(scene["Q"], boxes, scores, scene["image"], iters=3, method=method)
    out_p = instance_crf(scene["Q"], boxes[perm], scores[perm], scene["image"], iters=3, method=method)
    channels = [0] + [crf_channel(int(perm[i]) + 1, j, P) for i in range(3) for j in range(1, P + 1)]
    torch.testing.assert_close(out_p, out[channels], atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------- unary (Eq. 1-3)


def test_unary_matches_hand_computation():
    # A 1x2 image, P = 2, one detection covering only the left pixel (centre x = 0.5 is inside [0, 1]).
    Q = torch.tensor([[[0.2, 0.6]], [[0.5, 0.3]], [[0.3, 0.1]]], dtype=torch.float64)  # (3, 1, 2)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    scores = torch.tensor([0.8], dtype=torch.float64)
    w_box, w_global, eps = 2.0, 0.5, 1e-6
    U = instance_unary(Q, boxes, scores, w_box=w_box, w_global=w_global, eps=eps)
    expected = -torch.log(torch.tensor([
        [[0.5 * 0.2 + eps, 0.5 * 0.6 + eps]],  # background: global term only, w_global Q(0)
        [[2 * 0.8 * 0.5 + 0.5 * 0.5 + eps, 0.5 * 0.3 + eps]],  # (1, 1): box term inside, global everywhere
        [[2 * 0.8 * 0.3 + 0.5 * 0.3 + eps, 0.5 * 0.1 + eps]],  # (1, 2)
    ], dtype=torch.float64))
    torch.testing.assert_close(U, expected)
    # iters = 0 is softmax(-U); so is switching the pairwise term off.
    out0 = instance_crf(Q, boxes, scores, torch.zeros(3, 1, 2, dtype=torch.float64), iters=0, w_box=w_box,
                        w_global=w_global, eps=eps)
    torch.testing.assert_close(out0, torch.softmax(-expected, 0))
    # Box-term-only ablation: person labels lose the global term, the background keeps w_global Q(0).
    U_box = instance_unary(Q, boxes, scores, w_box=w_box, w_global=w_global, eps=eps, global_term=False)
    torch.testing.assert_close(U_box[1, 0, 1], -torch.log(torch.tensor(eps, dtype=torch.float64)))
    torch.testing.assert_close(U_box[0], expected[0])


def test_squash_and_default_weights():
    s = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(squash_detection_scores(s), torch.sigmoid(2 * s - 1))
    assert float(squash_detection_scores(torch.tensor(0.5))) == pytest.approx(0.5)
    assert default_pairwise_weights(True) == (4.0, 3.0)
    w_app, w_smooth = default_pairwise_weights(False)
    assert w_app == pytest.approx(4.0 / (2 * math.pi * 49.0**2 - 1))
    assert w_smooth == pytest.approx(3.0 / (2 * math.pi * 3.0**2 - 1))


def test_pairwise_changes_the_result(scene):
    base = instance_crf(scene["Q"], scene["boxes"], scene["scores"], scene["image"], iters=0)
    crf = instance_crf(scene["Q"], scene["boxes"], scene["scores"], scene["image"], iters=5, normalize=True)
    off = instance_crf(scene["Q"], scene["boxes"], scene["scores"], scene["image"], iters=5, pairwise=False)
    assert (crf - base).abs().max() > 1e-2
    torch.testing.assert_close(off, base)


# --------------------------------------------------------------------------------------------- exact vs fast


def test_options_are_one_dataclass(scene):
    opts = CRFOptions(iters=2, normalize=False, method="exact")
    a = instance_crf(scene["Q"], scene["boxes"], scene["scores"], scene["image"], options=opts)
    b = instance_crf(scene["Q"], scene["boxes"], scene["scores"], scene["image"], iters=2, normalize=False,
                     method="exact")
    torch.testing.assert_close(a, b)
    assert InstanceCRF(options=opts, iters=3).options == CRFOptions(iters=3, normalize=False, method="exact")
    with pytest.raises(TypeError, match="unknown option"):
        instance_crf(scene["Q"], scene["boxes"], scene["scores"], scene["image"], itres=2)
    with pytest.raises(ValueError, match="method must be one of 'exact', 'fast', 'lattice'"):
        CRFOptions(method="bilateral")


def test_public_names_stay_importable():
    import hparse.ops as ops

    for name in ("match_segments", "crf_channel", "instance_crf", "InstanceCRF", "hungarian_matched_loss",
                 "crf_prediction", "squash_detection_scores"):
        assert hasattr(ops, name)
    assert ops.crf_channel(2, 3, 19) == 1 + 19 + 2


def test_normalised_kernels_do_not_depend_on_kernel_mass(scene):
    """The default (normalised, released) kernels average the neighbours' Q: a label held by every pixel gets the
    message w_app + w_smooth = 7 everywhere. The plain sums with their uniform-region weights give the same only
    where a pixel has the full kernel mass 2πθ² - 1; on a small image the appearance part is a few percent of it."""
    image = scene["image"]
    uniform = torch.zeros(2, *image.shape[1:])
    uniform[1] = 1.0  # every pixel holds label 1
    for normalize in (True, False):
        w_app, w_smooth = default_pairwise_weights(normalize)
        app, smooth = pairwise_messages(uniform.double(), image, method="exact", normalize=normalize)
        if normalize:
            torch.testing.assert_close(w_app * app[1], torch.full_like(app[1], 4.0))
            torch.testing.assert_close(w_smooth * smooth[1], torch.full_like(smooth[1], 3.0))
        else:
            # appearance: well under a tenth of the released message at every pixel of this 24 x 28 image
            assert (w_app * app[1]).max() < 0.1 * 4.0
            # smoothness (θγ = 3) reaches its full mass away from the border: the released message there
            interior = (w_smooth * smooth[1])[10:14, 10:18]
            torch.testing.assert_close(interior, torch.full_like(interior, 3.0), atol=0.05, rtol=0)
    # The defaults are the normalised form.
    out = instance_crf(scene["Q"], scene["boxes"], scene["scores"], image, method="exact")
    ref = instance_crf(scene["Q"], scene["boxes"], scene["scores"], image, method="exact", normalize=True)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("normalize", [False, True])
def test_fast_matches_exact(normalize):
    s = make_scene(dtype=torch.float64)
    args = (s["Q"], s["boxes"], s["scores"], s["image"])
    kw = dict(iters=5, normalize=normalize)
    exact = instance_crf(*args, method="exact", **kw)
    # Stride 1: the appearance kernel is exact, only the smoothness truncation at 4θγ differs.
    fast1 = instance_crf(*args, method="fast", app_stride=1, **kw)
    assert (fast1 - exact).abs().max() < 1e-4
    # Stride 2: Gaussian cell summaries; still close on this piecewise-flat scene.
    fast2 = instance_crf(*args, method="fast", app_stride=2, **kw)
    assert (fast2 - exact).abs().max() < 5e-2
    assert (fast2 - exact).abs().mean() < 2e-3


def test_fast_matches_exact_on_synthcrowd_with_normalised_kernels():
    # The flat scene above is easy, and with the default unnormalised weights the appearance term barely moves
    # the output. Here: a textured 64x64 SynthCrowd image (the benchmark's) with normalised kernels, where the
    # appearance term matters and the fast path's cell summaries err most.
    from hparse.benchmarks.instance_crf import simulated_inputs
    from hparse.data import SynthCrowd

    ds = SynthCrowd(split="val", num_images=1, image_size=64, min_people=4, max_people=4, seed=0)
    sample = ds[0]
    inputs = simulated_inputs(sample, ds.labels.num_classes, seed=0)
    args = (inputs["Q"], inputs["boxes"], inputs["scores"], sample["image"])
    kw = dict(iters=3, normalize=True)
    exact = instance_crf(*args, method="exact", **kw)
    fast = instance_crf(*args, method="fast", **kw)  # default stride (2 at 64x64)
    no_app = instance_crf(*args, method="exact", w_app=0.0, **kw)
    top = exact.argmax(0)
    flipped = (fast.argmax(0) != top).float().mean()
    flipped_by_app = (no_app.argmax(0) != top).float().mean()
    err = (fast - exact).abs()
    app_effect = (no_app - exact).abs().mean()
    # Measured: 0.12% of the top labels flipped, mean |dQ| 6e-5, max 0.21 on a few pixels; the appearance term
    # itself flips 3.6% of the top labels and moves Q by 1.4e-2 on average.
    assert flipped < 0.01
    assert err.mean() < 5e-4
    assert err.max() < 0.5
    assert app_effect > 2e-3 and flipped_by_app > 0.01  # the appearance term does matter here ...
    assert err.mean() < 0.05 * app_effect and flipped < 0.2 * flipped_by_app  # ... and the fast path keeps it


def test_fast_float32_close_to_exact_float64():
    s64 = make_scene(dtype=torch.float64)
    s32 = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in s64.items()}
    exact = instance_crf(s64["Q"], s64["boxes"], s64["scores"], s64["image"], method="exact", normalize=True)
    fast = instance_crf(s32["Q"], s32["boxes"], s32["scores"], s32["image"], method="fast", app_stride=1,
                        normalize=True)
    assert (fast.double() - exact).abs().max() < 1e-3


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("method,stride,normalize", [("exact", None, False), ("exact", None, True),
                                                     ("fast", 1, False), ("fast", 2, True),
                                                     ("lattice", None, False), ("lattice", None, True)])
def test_gradcheck(method, stride, normalize):
    s = make_scene(height=5, width=6, num_parts=2, dtype=torch.float64, seed=1)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 5.0], [2.0, 1.0, 6.0, 5.0]], dtype=torch.float64)
    logits = torch.log(s["Q"]).requires_grad_(True)
    scores = torch.tensor([0.9, 0.6], dtype=torch.float64, requires_grad=True)
    weights = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (1.0, 0.7, 0.5, 0.3)]

    def fn(lg, sc, wb, wg, wa, ws):
        return instance_crf(torch.softmax(lg, 0), boxes, sc, s["image"], iters=2, w_box=wb, w_global=wg, w_app=wa,
                            w_smooth=ws, method=method, app_stride=stride, normalize=normalize)

    assert torch.autograd.gradcheck(fn, (logits, scores, *weights))


def test_module_weights_are_learnable(scene):
    crf = InstanceCRF(iters=2)
    names = {n for n, _ in crf.named_parameters()}
    assert names == {"log_w_box", "log_w_global", "log_w_app", "log_w_smooth"}
    assert crf.weights() == pytest.approx({"w_box": 1.0, "w_global": 1.0, "w_app": default_pairwise_weights(True)[0],
                                           "w_smooth": default_pairwise_weights(True)[1]})
    assert default_pairwise_weights(True) == (4.0, 3.0)  # the released weights of normalised kernels (the default)
    scores = scene["scores"].clone().requires_grad_(True)
    Q = scene["Q"].clone().requires_grad_(True)
    out = crf(Q, scene["boxes"], scores, scene["image"], log_probs=True)
    loss = hungarian_matched_loss(out, scene["instances"], scene["semantic"], num_parts=3, pred_is_log=True)
    loss.backward()
    for p in (*crf.parameters(), scores, Q):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------- behaviour (§3.2)


def test_module_matches_functional_op_and_refuses_zero_weights(scene):
    crf = InstanceCRF(iters=2, w_box=2.0, normalize=True)
    out = crf(scene["Q"], scene["boxes"], scene["scores"], scene["image"])
    ref = instance_crf(scene["Q"], scene["boxes"], scene["scores"], scene["image"], iters=2, w_box=2.0,
                       normalize=True)
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="w_global = 0"):
        InstanceCRF(w_global=0.0)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("truncated", [1, 2])
def test_global_term_recovers_pixels_outside_a_truncated_box(scene, truncated, normalize):
    # Person 1 spans columns 3..11; its box is cut at x = 8 and it becomes detection `truncated`.
    P = scene["num_parts"]
    boxes = scene["boxes"].clone()
    boxes[0, 2] = 8.0
    scores = scene["scores"].clone()
    if truncated == 2:
        boxes, scores = boxes.flip(0), scores.flip(0)
    other = 3 - truncated
    outside = (scene["instances"] == 1) & (torch.arange(28)[None, :] >= 8)
    inside = (scene["instances"] == 1) & ~outside

    def run(**kw):
        out = instance_crf(scene["Q"], boxes, scores, scene["image"], normalize=normalize, **kw)
        mass = out[1:].reshape(2, P, 24, 28).sum(1)  # (D, H, W): Σ_j Q_k(i, j)
        return crf_instances(out.argmax(0), P), mass[truncated - 1][outside], mass[other - 1][outside]

    # Full CRF (Fig. 4, §3.2.2): the global term keeps the person labels alive outside the box and the pairwise
    # terms carry the identity from inside the box, in either detection order.
    inst, mine, theirs = run()
    assert (inst[outside] == truncated).float().mean() > 0.95
    assert (inst[inside] == truncated).float().mean() > 0.95
    assert (mine > theirs).all()
    ratio = (mine / theirs).median()
    assert ratio > (10.0 if normalize else 1.15)
    # Without the pairwise terms the global term alone is the same for every detection: outside every box the
    # detections tie exactly, nothing links those pixels to the truncated person, and the arg-max takes
    # detection 1 -- right only in the order where the truncated person happens to be detection 1.
    inst_unary, mine, theirs = run(pairwise=False)
    torch.testing.assert_close(mine, theirs)
    recovered = (inst_unary[outside] == truncated).float().mean()
    assert recovered > 0.95 if truncated == 1 else recovered < 0.05
    # Box term only (Tab. 1, the model of Arnab & Torr): the pixels outside the box are lost to the background.
    inst_box, _, _ = run(global_term=False)
    assert (inst_box[outside] == 0).float().mean() > 0.95
    assert (inst_box[inside] == truncated).float().mean() > 0.9


def test_box_term_suppresses_a_false_positive(scene):
    boxes = torch.cat([scene["boxes"], torch.tensor([[0.0, 20.0, 10.0, 24.0]])])  # background only
    scores = torch.cat([scene["scores"], torch.tensor([0.95])])
    inst = crf_instances(instance_crf(scene["Q"], boxes, scores, scene["image"]).argmax(0), 3)
    assert (inst == 3).sum() == 0
    assert (inst[scene["instances"] == 1] == 1).float().mean() > 0.9


def test_granularities(scene):
    P = scene["num_parts"]
    out = instance_crf(scene["Q"], scene["boxes"], scene["scores"], scene["image"])
    labels = out.argmax(0)
    person_parts = crf_to_person_parts(labels, 2, P)
    inst, sem = crf_instances(labels, P), crf_semantic(labels, P)
    torch.testing.assert_close(person_parts.sum(0), sem)  # persons do not overlap in a CRF labelling
    for i in (1, 2):
        torch.testing.assert_close(person_parts[i - 1] > 0, inst == i)
    # The clean scene is parsed correctly at every granularity.
    assert (inst == scene["instances"]).float().mean() > 0.97
    assert (sem == scene["semantic"]).float().mean() > 0.97
    pred = crf_prediction(out, P, scene["scores"], scene["boxes"], rescore=True)
    assert set(pred) == {"semantic", "person_parts", "instances", "person_scores", "person_boxes"}
    assert pred["person_parts"].shape == (2, 24, 28) and pred["person_scores"].shape == (2,)
    assert ((pred["person_scores"] > 0.5) & (pred["person_scores"] <= 1)).all()


# --------------------------------------------------------------------------------------------- bad inputs


def _call(scene, **changes):
    args = dict(Q=scene["Q"], boxes=scene["boxes"], scores=scene["scores"], image=scene["image"])
    args.update(changes)
    opts = {k: args.pop(k) for k in list(args) if k not in ("Q", "boxes", "scores", "image")}
    return instance_crf(args["Q"], args["boxes"], args["scores"], args["image"], **opts)


@pytest.mark.parametrize("change,message", [
    (lambda s: dict(boxes=torch.tensor([[0.0, 0.0, 40.0, 10.0], [1.0, 1.0, 5.0, 5.0]])), "outside the 28x24"),
    (lambda s: dict(boxes=torch.tensor([[5.0, 5.0, 5.0, 10.0], [1.0, 1.0, 5.0, 5.0]])), "degenerate"),
    (lambda s: dict(boxes=torch.tensor([[5.0, 5.0, float("nan"), 10.0], [1.0, 1.0, 5.0, 5.0]])), "not finite"),
    (lambda s: dict(boxes=torch.zeros(2, 5)), r"boxes must be \(D, 4\)"),
    (lambda s: dict(scores=torch.tensor([0.5, -0.1])), r"scores\[1\] = -0.1"),
    (lambda s: dict(scores=torch.tensor([0.5])), "scores must be"),
    (lambda s: dict(Q=s["Q"].index_put((torch.tensor([1]), torch.tensor([3]), torch.tensor([4])),
                                       torch.tensor(float("nan")))), "NaN"),
    (lambda s: dict(Q=s["Q"] * 1.5), "must sum to 1"),
    (lambda s: dict(Q=-s["Q"]), "negative"),
    (lambda s: dict(Q=s["Q"][0]), r"Q must be \(P\+1, H, W\)"),
    (lambda s: dict(image=s["image"][:, :20]), "must match"),
    (lambda s: dict(image=s["image"] * 255), r"\[0, 1\]"),
    (lambda s: dict(method="permutohedral"), "method must be"),
    (lambda s: dict(iters=-1), "iters"),
    (lambda s: dict(w_box=-1.0), "w_box"),
])
def test_bad_inputs_raise_clear_errors(scene, change, message):
    with pytest.raises(ValueError, match=message):
        _call(scene, **change(scene))


def test_exact_refuses_large_images():
    side = int(math.isqrt(EXACT_MAX_PIXELS)) + 1
    Q = torch.full((2, side, side), 0.5)
    with pytest.raises(ValueError, match="EXACT_MAX_PIXELS"):
        instance_crf(Q, torch.zeros(0, 4), torch.zeros(0), torch.zeros(3, side, side), method="exact")


def test_batched_error_names_the_image(scene):
    Q = torch.stack([scene["Q"], scene["Q"]])
    image = torch.stack([scene["image"], scene["image"]])
    bad = torch.tensor([[0.0, 0.0, 50.0, 5.0]])
    with pytest.raises(ValueError, match="image 1: boxes"):
        instance_crf(Q, [scene["boxes"], bad], [scene["scores"], torch.tensor([0.5])], image)


# --------------------------------------------------------------------------------------------- matched loss


def _perfect_prediction(inst, sem, P, order, num_det=None, sharp=8.0):
    """Log-probabilities that put GT person order[i] on detection i+1."""
    num_det = len(order) if num_det is None else num_det
    target = torch.zeros_like(sem)
    for i, g in enumerate(order, start=1):
        m = (inst == g) & (sem > 0)
        target[m] = 1 + (i - 1) * P + (sem[m] - 1)
    onehot = torch.nn.functional.one_hot(target, 1 + num_det * P).permute(2, 0, 1).float()
    return torch.log_softmax(sharp * onehot, 0)


def test_matched_loss_is_permutation_invariant(scene):
    inst, sem, P = scene["instances"], scene["semantic"], scene["num_parts"]
    a = _perfect_prediction(inst, sem, P, [1, 2])
    b = _perfect_prediction(inst, sem, P, [2, 1])
    loss_a = hungarian_matched_loss(a, inst, sem, num_parts=P, pred_is_log=True)
    loss_b = hungarian_matched_loss(b, inst, sem, num_parts=P, pred_is_log=True)
    torch.testing.assert_close(loss_a, loss_b)
    # ... and it equals the CE of a perfect one-hot at temperature 8 (the minimum for this prediction).
    expected = -torch.log_softmax(torch.tensor([8.0] + [0.0] * (2 * P)), 0)[0]
    torch.testing.assert_close(loss_a, expected)
    # Without matching, the permuted prediction would be wrong almost everywhere on the people.
    m = match_segments(b.argmax(0), inst, sem, 2, P)
    assert sorted({(g, i) for g, _, i in m.pairs}) == [(1, 2), (2, 1)]
    assert m.unmatched == [] and all(v == pytest.approx(1.0) for v in m.iou)


def test_matched_loss_from_probabilities_matches_log_form(scene):
    inst, sem, P = scene["instances"], scene["semantic"], scene["num_parts"]
    logp = _perfect_prediction(inst, sem, P, [2, 1], sharp=2.0)
    loss_log = hungarian_matched_loss(logp, inst, sem, num_parts=P, pred_is_log=True)
    loss_prob = hungarian_matched_loss(logp.exp(), inst, sem, num_parts=P)
    torch.testing.assert_close(loss_log, loss_prob)


def test_unmatched_segments_become_background_or_ignored(scene):
    inst, sem, P = scene["instances"], scene["semantic"], scene["num_parts"]
    pred = _perfect_prediction(inst, sem, P, [1])  # one detection: person 2 was missed
    for level in ("person", "segment"):
        m = match_segments(pred.argmax(0), inst, sem, 1, P, level=level)
        assert sorted(m.unmatched) == [(2, j) for j in range(1, P + 1)]
        person2 = (inst == 2) & (sem > 0)
        assert (m.target[person2] == 0).all()  # the undetected person goes to background
        assert (m.target[(inst == 1) & (sem > 0)] == (sem[(inst == 1) & (sem > 0)])).all()  # (1, j) = channel j
        ignored = match_segments(pred.argmax(0), inst, sem, 1, P, level=level, unmatched="ignore")
        assert (ignored.target[person2] == 255).all()


def test_person_level_matching_keeps_parts_together(scene):
    inst, sem, P = scene["instances"], scene["semantic"], scene["num_parts"]
    pred = _perfect_prediction(inst, sem, P, [2, 1])
    m = match_segments(pred.argmax(0), inst, sem, 2, P)  # level="person" is the default (Eq. 4)
    assert sorted(m.pairs) == sorted([(2, j, 1) for j in range(1, P + 1)] + [(1, j, 2) for j in range(1, P + 1)])


def _relabel(labels, mask, channel):
    out = labels.clone()
    out[mask] = channel
    return out


def test_mislabelled_part_of_a_detected_person_keeps_its_part_label(scene):
    # Person 1 is detection 1, but its part 1 (the "hair") is predicted as part 2 (the "face") of detection 1.
    inst, sem, P = scene["instances"], scene["semantic"], scene["num_parts"]
    hair = (inst == 1) & (sem == 1)
    labels = _relabel(_perfect_prediction(inst, sem, P, [1, 2]).argmax(0), hair, crf_channel(1, 2, P))
    m = match_segments(labels, inst, sem, 2, P)
    assert (m.target[hair] == crf_channel(1, 1, P)).all()  # (detection 1, hair): right person, right part
    assert (1, 1, 1) in m.pairs and m.unmatched == []
    # The per-segment reading sends it to background, which would teach the CRF to drop the detected hair.
    seg = match_segments(labels, inst, sem, 2, P, level="segment")
    assert (seg.target[hair] == 0).all() and (1, 1) in seg.unmatched


def test_split_person_is_reunited_on_one_detection(scene):
    # Three detections: person 1's top rows went to detection 3, the rest of it to detection 1.
    inst, sem, P = scene["instances"], scene["semantic"], scene["num_parts"]
    labels = _perfect_prediction(inst, sem, P, [1, 2], num_det=3).argmax(0)
    top = (inst == 1) & (sem > 0) & (torch.arange(24)[:, None] < 7)
    labels[top] = 1 + 2 * P + (sem[top] - 1)  # (3, j)
    m = match_segments(labels, inst, sem, 3, P)
    person1 = (inst == 1) & (sem > 0)
    assert (crf_instances(m.target, P)[person1] == 1).all()  # every part of person 1 on detection 1
    assert (crf_semantic(m.target, P)[person1] == sem[person1]).all()  # each with its own part label
    assert (crf_instances(m.target, P)[(inst == 2) & (sem > 0)] == 2).all()
    # Per segment, part 1 (only in the top rows) would follow detection 3: the person stays split.
    seg = match_segments(labels, inst, sem, 3, P, level="segment")
    assert len(torch.unique(crf_instances(seg.target, P)[person1])) == 2


def test_boxes_match_a_person_the_crf_has_not_claimed_yet(scene):
    # Early in training the CRF may give a detected person's pixels to the background: without boxes that person
    # looks undetected; with the detection boxes it is matched to the detection whose box covers it.
    inst, sem, P = scene["instances"], scene["semantic"], scene["num_parts"]
    labels = _perfect_prediction(inst, sem, P, [1, 2]).argmax(0)
    labels[inst == 2] = 0
    plain = match_segments(labels, inst, sem, 2, P)
    assert (plain.target[(inst == 2) & (sem > 0)] == 0).all()
    boxed = match_segments(labels, inst, sem, 2, P, boxes=scene["boxes"])
    person2 = (inst == 2) & (sem > 0)
    assert (crf_instances(boxed.target, P)[person2] == 2).all() and boxed.unmatched == []
    # A box that covers nobody does not take a person.
    far = torch.tensor([[3.0, 2.0, 12.0, 20.0], [0.0, 22.0, 2.0, 24.0]])
    assert (match_segments(labels, inst, sem, 2, P, boxes=far).target[person2] == 0).all()


def test_ignore_label_is_ignored(scene):
    inst, sem, P = scene["instances"], scene["semantic"].clone(), scene["num_parts"]
    pred = _perfect_prediction(inst, sem, P, [1, 2], sharp=1.0)
    sem_ign = sem.clone()
    sem_ign[:5] = 255
    keep = sem_ign != 255
    loss = hungarian_matched_loss(pred, inst, sem_ign, num_parts=P, pred_is_log=True)
    target = match_segments(pred.argmax(0), inst, sem, 2, P).target
    manual = -pred.gather(0, target[None])[0][keep].mean()
    torch.testing.assert_close(loss, manual)


def test_ohem_keeps_the_k_hardest_pixels():
    g = torch.Generator().manual_seed(0)
    loss = torch.rand(20, 30, generator=g)
    valid = torch.rand(20, 30, generator=g) > 0.2
    mask = ohem.ohem_mask(loss, 50, valid)
    assert int(mask.sum()) == 50 and not (mask & ~valid).any()
    assert loss[mask].min() >= loss[valid & ~mask].max()
    torch.testing.assert_close(ohem.ohem_reduce(loss, 50, valid), loss[valid].sort(descending=True).values[:50].mean())
    assert int(ohem.ohem_mask(loss, 0.1, valid).sum()) == math.ceil(0.1 * int(valid.sum()))
    assert int(ohem.ohem_mask(loss, 10_000, valid).sum()) == int(valid.sum())
    assert int(ohem.ohem_mask(loss, None, valid, loss_threshold=0.5).sum()) == int((valid & (loss >= 0.5)).sum())
    with pytest.raises(ValueError, match=">= 1"):
        ohem.ohem_mask(loss, 0)


def test_matched_loss_with_ohem_averages_k_pixels(scene):
    inst, sem, P = scene["instances"], scene["semantic"], scene["num_parts"]
    pred = instance_crf(scene["Q"], scene["boxes"], scene["scores"], scene["image"], log_probs=True)
    full = hungarian_matched_loss(pred, inst, sem, num_parts=P, pred_is_log=True)
    hard = hungarian_matched_loss(pred, inst, sem, num_parts=P, pred_is_log=True, ohem_k=64)
    target = match_segments(pred.argmax(0), inst, sem, 2, P).target
    nll = -pred.gather(0, target[None])[0].flatten()
    torch.testing.assert_close(hard, nll.sort(descending=True).values[:64].mean())
    assert hard > full


def test_matched_loss_checks_shapes(scene):
    with pytest.raises(ValueError, match="do not form 1 \\+ D·P"):
        hungarian_matched_loss(torch.zeros(6, 24, 28), scene["instances"], scene["semantic"], num_parts=4)
    with pytest.raises(ValueError, match="ground truth"):
        hungarian_matched_loss(torch.zeros(7, 20, 28), scene["instances"], scene["semantic"], num_parts=3)


# --------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_fast_on_cuda_matches_cpu(scene):
    cpu = instance_crf(scene["Q"], scene["boxes"], scene["scores"], scene["image"], normalize=True)
    cuda = instance_crf(scene["Q"].cuda(), scene["boxes"].cuda(), scene["scores"].cuda(), scene["image"].cuda(),
                        normalize=True)
    assert (cuda.cpu() - cpu).abs().max() < 1e-3


# --------------------------------------------------------------------------------------------- benchmark inputs


def test_simulated_inputs_stage_the_detector_failures():
    from hparse.benchmarks.instance_crf import simulated_inputs
    from hparse.data import SynthCrowd

    sample = SynthCrowd(split="val", num_images=1, image_size=48, min_people=2, max_people=2, seed=0)[0]
    n = len(sample["boxes"])
    plain = simulated_inputs(sample, 20, box_jitter=0.0, seed=0)
    torch.testing.assert_close(plain["boxes"], sample["boxes"])
    torch.testing.assert_close(plain["Q"].sum(0), torch.ones(48, 48))
    assert (plain["Q"].argmax(0) == sample["semantic"]).float().mean() > 0.8
    staged = simulated_inputs(sample, 20, box_jitter=0.0, truncate=(0, 0.5), false_positive=0.9, seed=0)
    assert len(staged["boxes"]) == n + 1 and staged["false_positive"] == n
    top, bottom = sample["boxes"][0, 1], sample["boxes"][0, 3]
    assert float(staged["boxes"][0, 3]) == pytest.approx(float(top + 0.5 * (bottom - top)))
    fp = staged["boxes"][n].round().long()
    assert (sample["instances"][fp[1] : fp[3], fp[0] : fp[2]] > 0).float().mean() < 0.2
    # The op accepts what the helper makes.
    out = instance_crf(staged["Q"], staged["boxes"], staged["scores"], sample["image"], iters=1)
    assert out.shape == (1 + (n + 1) * 19, 48, 48)


@pytest.mark.slow
def test_benchmark_smoke_writes_its_result(tmp_results):
    from hparse.benchmarks.instance_crf import run
    from hparse.engine import get_profile, load_result

    metrics = run(get_profile("smoke"), torch.device("cpu"))
    assert metrics["small"]["unnormalized"]["error"]["stride1"]["max_abs"] < 1e-3
    record = load_result("bench/instance_crf", "smoke", root=tmp_results)
    assert set(record["metrics"]["large"]["runs"]) == {"D1", "D4"}
