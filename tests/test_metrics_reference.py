"""Cross-check against a slow, literal re-statement of the official evaluation loops on random small images.

The reference functions below follow the official scripts step by step (``shared/reference/metrics_and_formats.md``
§A1-A3, §A5): Parsing R-CNN ``parsing_eval.py`` (``fast_hist``, ``cal_one_mean_iou``, ``eval_parsing_ap``), MHP v2
``eval_mhp.py`` (``get_gt`` skipping empty persons) and CIHP ``test_inst_part_ap.py`` (``compute_class_ap``) with
the painting of Parsing R-CNN's ``parsing_png``. They loop over predictions, ground-truth persons and masks with
dense NumPy arrays, exactly as those scripts do, and share no code with ``hparse.metrics``. Sorting is stable in
both (the official unstable ``argsort`` leaves ties undefined).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hparse.metrics import ParsingEvaluator

THR = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]

# The official arithmetic divides by zero on empty cases (0/0 recall, the mean of an empty PCP list) and NumPy warns.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


# ------------------------------------------------------------------------------------------ reference loops


def ref_fast_hist(gt, pred, n):
    k = (gt >= 0) & (gt < n)
    return np.bincount(n * gt[k].astype(int) + pred[k].astype(int), minlength=n**2).reshape(n, n)


def ref_voc_ap(rec, prec):
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def ref_miou(images, n):
    hist = np.zeros((n, n))
    for pred, gt in images:
        hist += ref_fast_hist(gt.flatten(), pred["semantic"].flatten(), n)
    with np.errstate(invalid="ignore", divide="ignore"):
        iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    return np.nanmean(iu)


def ref_part_ap(images, n, score_thresh=0.001, skip_empty=False):
    """``eval_parsing_ap`` (Parsing R-CNN), with MHP's ``get_gt`` empty-person skip as an option."""
    class_recs, npos = [], 0
    for _, gt in images:
        maps = []
        for k in range(1, gt["num_gt"] + 1):
            m = gt["semantic"] * (gt["instances"] == k)
            if skip_empty and np.sum(m > 0) == 0:
                continue
            maps.append(m)
            npos += 1
        class_recs.append(maps)
    conf, img_of, ptr = [], [], []
    for i, (pred, _) in enumerate(images):
        for j, s in enumerate(pred["scores"]):
            conf.append(s)
            img_of.append(i)
            ptr.append(j)
    conf = np.array(conf, dtype=np.float64)
    order = np.argsort(-conf, kind="stable")
    nd = len(order)
    det = [[np.zeros(len(class_recs[i]), bool) for i in range(len(images))] for _ in THR]
    tp = [np.zeros(nd) for _ in THR]
    fp = [np.zeros(nd) for _ in THR]
    pcp_list = [[] for _ in THR]
    for d, idx in enumerate(order):
        if conf[idx] < score_thresh:
            continue
        mask_pred = images[img_of[idx]][0]["person_parts"][ptr[idx]]
        ovmax, jmax = -np.inf, -1
        for j, mask_gt in enumerate(class_recs[img_of[idx]]):
            hist = ref_fast_hist(mask_gt.flatten(), mask_pred.flatten(), n).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                seg_iou = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
            with _nowarn():  # nanmean of an all-NaN row warns; the official script silences warnings
                mean = np.nanmean(seg_iou)
            if mean > ovmax:
                ovmax, seg_iou_max, jmax = mean, seg_iou, j
                mask_gt_u = np.unique(mask_gt)
        for t, thr in enumerate(THR):
            if ovmax > thr:
                if not det[t][img_of[idx]][jmax]:
                    tp[t][d] = 1.0
                    det[t][img_of[idx]][jmax] = True
                    pcp_d = len(mask_gt_u[np.logical_and(mask_gt_u > 0, mask_gt_u < n)])
                    with np.errstate(invalid="ignore"):
                        pcp_n = float(np.sum(seg_iou_max[1:] > thr))
                    pcp_list[t].append(pcp_n / pcp_d if pcp_d > 0 else 0.0)
                else:
                    fp[t][d] = 1.0
            else:
                fp[t][d] = 1.0
    aps, pcps = [], []
    for t in range(len(THR)):
        ctp, cfp = np.cumsum(tp[t]), np.cumsum(fp[t])
        rec = ctp / float(npos)
        prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        aps.append(ref_voc_ap(rec, prec))
        pcp_list[t].extend([0.0] * (npos - len(pcp_list[t])))
        pcps.append(np.mean(pcp_list[t]))
    return aps, pcps


class _nowarn:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def ref_paint(pred):
    """Parsing R-CNN ``parsing_png``: ascending score, nonzero pixels overwrite; ids 1.. in painting order."""
    inst = np.zeros(pred["person_parts"].shape[1:], dtype=np.int64)
    seg = np.zeros_like(inst)
    owner = np.full(inst.shape, -1)
    for k in np.argsort(pred["scores"], kind="stable"):
        m = pred["person_parts"][k] > 0
        seg = np.where(m, pred["person_parts"][k], seg)
        owner = np.where(m, k, owner)
    return seg, owner


def ref_region_ap(images, n, part_scores=False, tvg=False):
    """``compute_class_ap`` of the CIHP script on the painted part-instance maps; ``np.mean`` over classes.

    ``tvg=True``: the Oxford TVG variant (``compute_overlaps.m`` with ``ignore_enabled``, ``compute_mAP.m``):
    predicted pixels on void ground truth removed after the region list is taken, uninterpolated AP.
    """
    prepared = []
    for pred, gt in images:
        seg, owner = ref_paint(pred)
        # CIHP prediction format: indexed PNG, pixel value k <-> line k of the txt ("class score").
        pre_img = np.zeros_like(seg)
        items = []
        for k in range(len(pred["scores"])):
            for c in range(1, n):
                m = (owner == k) & (seg == c)
                if m.any():
                    items.append((c, pred["part_scores"][k, c] if part_scores else pred["scores"][k]))
                    pre_img[m] = len(items)
        # CIHP GT: Instance_ids = n*(human-1) + class, txt lines "inst_id class_id human_id".
        if tvg:
            pre_img = np.where(gt["semantic"] == 255, 0, pre_img)
        inst_gt = np.where((gt["instances"] > 0) & (gt["semantic"] > 0) & (gt["semantic"] < n),
                           n * (gt["instances"] - 1) + gt["semantic"], 0)
        gt_lines = [(i, i - n * ((i - 1) // n)) for i in np.unique(inst_gt) if i > 0]
        prepared.append((pre_img, items, inst_gt, gt_lines))
    table = np.zeros((n - 1, len(THR)))
    for c in range(1, n):
        gt_num, tp, fp, scores = 0, [[] for _ in THR], [[] for _ in THR], []
        for pre_img, items, inst_gt, gt_lines in prepared:
            pre_id = [i + 1 for i, it in enumerate(items) if it[0] == c]
            pre_scores = [it[1] for it in items if it[0] == c]
            gt_id = [i for i, cls in gt_lines if cls == c]
            gt_masks = [inst_gt == i for i in np.unique(inst_gt) if i in set(gt_id)]
            pre_masks = [pre_img == i for i in (pre_id if tvg else np.unique(pre_img)) if i in set(pre_id)]
            gt_num += len(gt_masks)
            if not pre_masks:
                continue
            scores += pre_scores
            if not gt_masks:
                for _ in pre_masks:
                    for k in range(len(THR)):
                        fp[k].append(1)
                        tp[k].append(0)
                continue
            for pm in pre_masks:
                ious = [np.logical_and(pm, gm).sum() / (pm.sum() + gm.sum() - np.logical_and(pm, gm).sum())
                        for gm in gt_masks]
                best = ious[int(np.argmax(ious))]
                for k, thr in enumerate(THR):
                    tp[k].append(1 if best > thr else 0)
                    fp[k].append(0 if best > thr else 1)
        ind = np.argsort(-np.array(scores, dtype=np.float64), kind="stable")
        for k in range(len(THR)):
            m_tp, m_fp = np.cumsum(np.array(tp[k])[ind]), np.cumsum(np.array(fp[k])[ind])
            with np.errstate(invalid="ignore", divide="ignore"):
                rec = m_tp / float(gt_num)
            prec = m_tp / np.maximum(m_fp + m_tp, np.finfo(np.float64).eps)
            if tvg:
                good = np.array(tp[k], dtype=np.float64)[ind]
                cum = 0.0
                for i in range(len(good)):
                    cum += good[i] * (good[: i + 1].sum() / (i + 1))
                table[c - 1, k] = cum / gt_num if gt_num else np.nan
            else:
                table[c - 1, k] = ref_voc_ap(rec, prec)
    return np.mean(table, axis=0)


# ------------------------------------------------------------------------------------------ random cases


def random_image(rng, n, size=(14, 12), max_gt=3, max_pred=4, ignore=True):
    """A small random image: GT persons as rectangles of random parts, predictions as noisy copies + junk."""
    h, w = size
    sem = np.zeros((h, w), dtype=np.int64)
    inst = np.zeros((h, w), dtype=np.int64)
    num_gt = int(rng.integers(0, max_gt + 1))
    for k in range(1, num_gt + 1):
        y0, x0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
        y1, x1 = y0 + rng.integers(2, h - y0 + 1), x0 + rng.integers(2, w - x0 + 1)
        parts = rng.choice(np.arange(1, n), size=int(rng.integers(1, n)), replace=False)
        block = rng.choice(np.concatenate([parts, [0]]), size=(y1 - y0, x1 - x0), p=None)
        sem[y0:y1, x0:x1] = block
        inst[y0:y1, x0:x1] = np.where(block >= 0, k, 0)
    if ignore:
        sem[rng.random((h, w)) < 0.05] = 255
    persons, scores = [], []
    for k in range(1, num_gt + 1):
        if rng.random() < 0.8:
            m = np.where(inst == k, np.where(sem < n, sem, 0), 0)
            noise = rng.random((h, w)) < 0.2
            m = np.where(noise & (inst == k), rng.integers(0, n, (h, w)), m)
            persons.append(m)
            if rng.random() < 0.3:  # a duplicate
                persons.append(np.roll(m, 1, axis=1))
    for _ in range(int(rng.integers(0, 2))):  # junk
        m = np.zeros((h, w), dtype=np.int64)
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        m[y0:y0 + 3, x0:x0 + 3] = rng.integers(0, n, (3, 3))
        persons.append(m)
    persons = persons[:max_pred]
    scores = np.round(rng.random(len(persons)), 2)  # rounding makes ties likely
    person_parts = np.stack(persons) if persons else np.zeros((0, h, w), dtype=np.int64)
    semantic = rng.integers(0, n, (h, w))
    semantic = np.where(rng.random((h, w)) < 0.7, np.where(sem < n, sem, 0), semantic)
    pred = {"person_parts": person_parts, "scores": scores, "semantic": semantic,
            "part_scores": np.round(rng.random((len(persons), n)), 2)}
    gt = {"semantic": sem, "instances": inst, "num_gt": num_gt}
    return pred, gt


def to_contract(pred, gt, i, part_scores=False):
    p = {"semantic": torch.as_tensor(pred["semantic"]), "person_parts": torch.as_tensor(pred["person_parts"]),
         "person_scores": torch.as_tensor(pred["scores"], dtype=torch.float32)}
    # Scores compared in float64 by the reference: hand over values exactly representable in float32.
    pred["scores"] = p["person_scores"].double().numpy()
    if part_scores:
        p["part_scores"] = torch.as_tensor(pred["part_scores"], dtype=torch.float32)
        pred["part_scores"] = p["part_scores"].double().numpy()
    t = {"semantic": torch.as_tensor(gt["semantic"]), "instances": torch.as_tensor(gt["instances"]),
         "boxes": torch.zeros(gt["num_gt"], 4), "meta": {"id": f"r{i}", "dataset": "random"}}
    return p, t


@pytest.mark.parametrize("seed", range(12))
def test_matches_official_loops(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 7))
    images = [random_image(rng, n) for _ in range(int(rng.integers(1, 6)))]
    use_part_scores = seed % 2 == 1
    ev = ParsingEvaluator(n)
    for i, (pred, gt) in enumerate(images):
        ev.update(*to_contract(pred, gt, i, use_part_scores))
    got = ev.compute()

    assert got["mIoU"] == pytest.approx(ref_miou([(p, g["semantic"]) for p, g in images], n), abs=1e-12)
    aps, pcps = ref_part_ap(images, n)
    np.testing.assert_allclose([got[f"APp{int(t * 100)}"] for t in THR], aps, atol=1e-12)
    np.testing.assert_allclose([got[f"PCP{int(t * 100)}"] for t in THR], pcps, atol=1e-12)
    apr = ref_region_ap(images, n, part_scores=use_part_scores)
    np.testing.assert_allclose([got[f"APr{int(t * 100)}"] for t in THR], apr, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("seed", range(6))
def test_matches_tvg_region_ap(seed):
    rng = np.random.default_rng(200 + seed)
    n = int(rng.integers(3, 6))
    images = [random_image(rng, n) for _ in range(int(rng.integers(1, 5)))]
    ev = ParsingEvaluator(n, ap_style="uninterpolated", ignore_void=True, metrics=("apr",))
    for i, (pred, gt) in enumerate(images):
        ev.update(*to_contract(pred, gt, i))
    got = ev.compute()
    apr = ref_region_ap(images, n, tvg=True)
    np.testing.assert_allclose([got[f"APr{int(t * 100)}"] for t in THR], apr, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("seed", range(4))
def test_matches_mhp_empty_person_skip(seed):
    rng = np.random.default_rng(100 + seed)
    n = 4
    images = [random_image(rng, n, ignore=False) for _ in range(4)]
    # An annotated person without pixels: MHP drops it, Parsing R-CNN counts it.
    pred, gt = images[0]
    gt["num_gt"] += 1
    for skip in (False, True):
        ev = ParsingEvaluator(n, skip_empty_gt=skip, metrics=("app",))
        for i, (p, g) in enumerate(images):
            ev.update(*to_contract(p, g, i))
        got = ev.compute()
        aps, pcps = ref_part_ap(images, n, skip_empty=skip)
        np.testing.assert_allclose([got[f"APp{int(t * 100)}"] for t in THR], aps, atol=1e-12)
        np.testing.assert_allclose([got[f"PCP{int(t * 100)}"] for t in THR], pcps, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(12, 112))
def test_matches_official_loops_many(seed):
    test_matches_official_loops(seed)
