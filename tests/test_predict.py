"""``hparse predict`` and ``hparse.predict``: own images (no ground truth) through any trained model, to files that
``hparse evaluate`` reads back (hparse.engine.predict, hparse.viz.overlay.render_prediction)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hparse
from hparse.cli import build_parser, main
from hparse.data import CIHP, SynthCrowd
from hparse.data.export import export_synth
from hparse.data.labels import CIHP_LABELS, COCO17
from hparse.engine import get_profile
from hparse.engine.checkpoint import save_checkpoint
from hparse.engine.predict import ImageReadError, Predictor, prediction_record, read_image, recipe_input_size
from hparse.metrics import ParsingEvaluator
from hparse.models import build_model
from hparse.models.registry import model_names
from hparse.recipes import METHODS, recipe
from hparse.viz import render_prediction

SMOKE = ["--profile", "smoke"]


def one_line_error(err: str) -> bool:
    return sum(line.startswith("hparse: error: ") for line in err.splitlines()) == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A Parsing R-CNN checkpoint trained for two steps of the smoke profile (SynthCrowd, 96-pixel images)."""
    out = tmp_path_factory.mktemp("predict_run") / "run"
    assert main(["train", *SMOKE, "--iterations", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory):
    """Three SynthCrowd val images exported in the CIHP layout (JPEG images with ground truth)."""
    root = tmp_path_factory.mktemp("predict_gt") / "instance-level_human_parsing"
    export_synth(SynthCrowd("val", num_images=3, image_size=96, max_people=3, seed=5), "cihp", root, "val")
    return root


@pytest.fixture
def folder(ground_truth, tmp_path):
    """The exported images, a corrupt JPEG, a grayscale PNG and an RGBA PNG of another size."""
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((ground_truth / "Validation" / "Images").glob("*.jpg")):
        shutil.copy(path, images / path.name)
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    rgb = np.asarray(Image.open(next(images.glob("synth-*.jpg"))).convert("RGB").resize((120, 80)))
    Image.fromarray(rgb).convert("L").save(images / "gray.png")
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 200, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(images / "rgba.png")
    (images / "notes.txt").write_text("not an image; not taken from a folder")
    return images


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------ the command


def test_predict_a_folder_skips_the_corrupt_file_and_round_trips_through_evaluate(run, ground_truth, folder,
                                                                                  tmp_path, capsys):
    out = tmp_path / "pred"
    code, stdout, err = run_cli(["predict", "--checkpoint", run, "--out", out, "--score-thresh", "0",
                                 "--batch-size", "1", folder], capsys)
    assert code == 1, err  # a file was skipped
    assert f"skipped {folder / 'corrupt.jpg'}" in err and "notes.txt" not in err + stdout
    assert "parsed 5 images" in stdout and "skipped 1 unreadable file" in stdout

    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(line["image"]).name for line in lines] == sorted(p.name for p in folder.glob("*.*")
                                                                  if p.suffix != ".txt")
    by_name = {Path(line["image"]).name: line for line in lines}
    assert "error" in by_name["corrupt.jpg"] and "persons" not in by_name["corrupt.jpg"]
    for name, (height, width) in (("gray.png", (80, 120)), ("rgba.png", (80, 120))):
        line = by_name[name]
        assert (line["height"], line["width"]) == (height, width)
        overlay = np.asarray(Image.open(out / line["overlay"]))
        assert overlay.shape == (height, width, 3)
        assert np.asarray(Image.open(out / "global_parsing" / f"{line['id']}.png")).shape == (height, width)
    line = by_name[min(n for n in by_name if n.startswith("synth"))]
    assert line["num_persons"] == len(line["persons"]) > 0  # an untrained model still proposes persons
    person = line["persons"][0]
    assert set(person) == {"person", "score", "box", "parts"} and 0 <= person["score"] <= 1
    assert all(name in CIHP_LABELS.names for name in person["parts"])
    scores = [p["score"] for p in line["persons"]]
    assert scores == sorted(scores, reverse=True)

    # The folder is an hparse prediction folder: score it, and compare with the same predictions in memory.
    metrics_json = tmp_path / "metrics.json"
    code, _, err = run_cli(["evaluate", "--pred", out, "--gt", ground_truth, "--dataset", "synth", "--json",
                            metrics_json], capsys)
    assert code == 0, err
    assert "are for images not in the synth val ground truth" in err  # gray, rgba: predictions without ground truth
    record = json.loads(metrics_json.read_text())
    gt = CIHP(ground_truth, "val")
    preds = hparse.predict(run, [gt.image_path(i) for i in gt.ids], device="cpu", batch_size=1)
    evaluator = ParsingEvaluator(20)
    for index, pred in enumerate(preds):
        evaluator.update(pred, gt[index])
    expected = evaluator.compute()
    assert record["metrics"]["num_images"] == 3
    for key in ("mIoU", "APp50", "APpvol", "PCP50", "APr50"):
        want, got = expected[key], record["metrics"][key]
        assert (got is None and np.isnan(want)) or got == pytest.approx(want, abs=1e-6), key


def test_predict_one_good_file_exits_0_and_applies_the_score_threshold(run, folder, tmp_path, capsys):
    image = folder / "gray.png"
    out = tmp_path / "pred"
    code, stdout, err = run_cli(["predict", "--checkpoint", run / "checkpoint.pt", "--out", out, image], capsys)
    assert code == 0, err
    line = json.loads((out / "predictions.jsonl").read_text())
    assert all(p["score"] >= 0.3 for p in line["persons"])  # the default --score-thresh
    code, _, err = run_cli(["predict", "--checkpoint", run, "--out", tmp_path / "tta", "--test-flip",
                            "--test-scales", "1.5", image], capsys)  # Parsing R-CNN's test-time augmentation
    assert code == 0, err
    assert (tmp_path / "tta" / "predictions.jsonl").exists()
    assert len((out / "person_parsing" / "gray.txt").read_text().splitlines()) == line["num_persons"]
    code, _, err = run_cli(["predict", "--checkpoint", run, "--out", out, "--score-thresh", "1", image], capsys)
    assert code == 0 and json.loads((out / "predictions.jsonl").read_text())["persons"] == []


@pytest.mark.parametrize("argv, fragment", [
    (["{tmp}/nothing_here"], "no such file or folder"),
    (["{empty}"], "no image files"),
    (["--score-thresh", "2", "{image}"], "--score-thresh: must be in [0, 1]"),
    (["--size", "0", "{image}"], "--size: must be >= 1"),
], ids=["missing input", "empty folder", "bad threshold", "bad size"])
def test_predict_user_errors_are_one_line(run, folder, tmp_path, capsys, argv, fragment):
    (tmp_path / "empty").mkdir()
    argv = [a.format(tmp=tmp_path, empty=tmp_path / "empty", image=folder / "gray.png") for a in argv]
    code, _, err = run_cli(["predict", "--checkpoint", run, "--out", tmp_path / "pred", *argv], capsys)
    assert code == 2 and one_line_error(err) and fragment in err, err


def test_predict_needs_a_readable_checkpoint(folder, tmp_path, capsys):
    code, _, err = run_cli(["predict", "--checkpoint", tmp_path / "none", folder / "gray.png"], capsys)
    assert code == 2 and one_line_error(err) and "does not exist" in err


# ------------------------------------------------------------------------------- every model, the Python call


def _smoke_model(name: str):
    """A model of the registry at the smoke recipe's size (a model without a recipe at its defaults), untrained."""
    torch.manual_seed(0)
    config = recipe(name, get_profile("smoke"))["model"] if name in METHODS else {}
    return build_model(name, num_classes=20, **config)


@pytest.mark.parametrize("name", model_names())
def test_every_registered_model_predicts_from_its_checkpoint(name, folder, tmp_path, capsys):
    model = _smoke_model(name)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(checkpoint, {"model": model.state_dict(), "model_config": model.build_config, "step": 0,
                                 "config": {"dataset": "synth", "image_size": 64}})
    image = np.array(Image.open(folder / "gray.png").convert("RGB"))  # 80 x 120
    preds = hparse.predict(checkpoint.parent, [folder / "rgba.png", Image.fromarray(image), image,
                                               torch.from_numpy(image).permute(2, 0, 1).float() / 255], device="cpu")
    for pred in preds:
        assert pred["semantic"].shape == (80, 120) and pred["person_parts"].shape[1:] == (80, 120)
        assert len(pred["person_scores"]) == len(pred["person_parts"])
    assert torch.equal(preds[1]["semantic"], preds[2]["semantic"])  # a Pillow image and its array: the same

    out = tmp_path / "pred"
    code, stdout, err = run_cli(["predict", "--checkpoint", checkpoint.parent, "--out", out, "--score-thresh", "0",
                                 folder / "gray.png"], capsys)
    assert code == 0, err
    assert f"with {name}" in stdout and "shorter side 64" in stdout
    assert (out / "overlay" / "gray.png").is_file() and (out / "global_parsing" / "gray.png").is_file()


def test_predict_resizes_as_the_recipe_says_and_answers_at_the_image_size(run):
    predictor = Predictor.load(run, device="cpu")
    assert (predictor.side, predictor.max_side) == (96, None)  # the smoke run's SynthCrowd side
    assert predictor.input_size(192, 384) == (96, 192)
    assert recipe_input_size({"test_size": 800, "max_size": 1333}, {"dataset": "cihp"}) == (800, 1333)
    assert recipe_input_size({"name": "mg_parser"}, {"dataset": "mhp"}) == (None, None)  # kept at their own size
    assert Predictor.load(run, device="cpu", size=48).input_size(100, 200) == (48, 96)
    photo = torch.rand(3, 240, 360)
    (pred,) = hparse.predict(run, photo, device="cpu", score_thresh=0.0)
    assert pred["semantic"].shape == (240, 360) and pred["person_parts"].shape[1:] == (240, 360)
    boxes = pred["person_boxes"]
    assert len(boxes) == 0 or (boxes[:, 2].max() <= 360 + 1e-3 and boxes[:, 3].max() <= 240 + 1e-3)
    (high,) = hparse.predict(run, photo, device="cpu", score_thresh=0.5)
    assert (high["person_scores"] >= 0.5).all() and len(high["person_scores"]) <= len(pred["person_scores"])


# ------------------------------------------------------------------------------------------------- reading


def test_read_image_handles_grayscale_alpha_exif_and_16_bit(tmp_path):
    gray = np.tile(np.arange(0, 240, 4, dtype=np.uint8), (20, 1))  # 20 x 60
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    assert np.array_equal(read_image(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, 2))

    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:5, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert (out[0, 0] == (255, 0, 0)).all() and (out[-1, -1] == (255, 255, 255)).all()  # onto white

    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10] = 255  # a white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show rotated by 90 degrees clockwise
    Image.fromarray(wide).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = read_image(tmp_path / "phone.jpg")
    assert upright.shape == (40, 20, 3) and upright[:10].mean() > 200 and upright[-10:].mean() < 50

    deep = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = read_image(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out.shape == (16, 16, 3) and out[-1, -1, 0] == 255 and out[0, 0, 0] == 0


@pytest.mark.parametrize("write, fragment", [
    (lambda p: p.write_bytes(b"not an image"), "not an image file"),
    (lambda p: p.write_bytes(_jpeg_bytes()[:300]), "corrupt"),
    (lambda p: Image.fromarray(np.zeros((4, 4), np.float32)).save(p.with_suffix(".tif")) or
     p.with_suffix(".tif").rename(p), "floating-point"),
], ids=["not an image", "truncated", "float"])
def test_read_image_refuses_with_the_file_name(tmp_path, write, fragment):
    path = tmp_path / "bad.jpg"
    write(path)
    with pytest.raises(ImageReadError, match=fragment) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_read_image_refuses_an_image_too_large(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr("hparse.data.io.MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageReadError, match="MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "big.png")


def _jpeg_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------- overlay, JSON


def test_overlay_draws_parts_outlines_scores_and_keypoints():
    sample = SynthCrowd("val", num_images=1, image_size=128, min_people=2, max_people=2, seed=1)[0]
    pred = {"person_parts": torch.stack([sample["semantic"] * (sample["instances"] == k) for k in (1, 2)]),
            "person_scores": torch.tensor([0.9, 0.6]), "keypoints": sample["keypoints"]}  # a perfect prediction
    assert pred["keypoints"].shape == (2, 17, 3) and (pred["keypoints"][0, :, 2] > 0).any()
    image = torch.zeros(3, 128, 128)  # black, so that everything drawn shows
    with_kp = render_prediction(image, pred, CIHP_LABELS, COCO17)
    without = render_prediction(image, {k: v for k, v in pred.items() if k != "keypoints"}, CIHP_LABELS)
    assert with_kp.shape == (128, 128, 3) and with_kp.dtype == np.uint8
    person = (pred["person_parts"][0] > 0).numpy()
    assert with_kp[person].any(axis=1).mean() > 0.9  # the parts are painted
    assert (with_kp != without).any(axis=2).sum() > 20  # the keypoints and limbs
    joint = pred["keypoints"][0][pred["keypoints"][0][:, 2] > 0][0]
    x, y = int(joint[0]), int(joint[1])
    assert (with_kp[y, x] != without[y, x]).any()

    records = prediction_record(pred, CIHP_LABELS)
    assert len(records) == 2 and len(records[0]["keypoints"]) == 17
    assert sum(records[0]["parts"].values()) == int(person.sum())


# ------------------------------------------------------------------------------------------- demo, train


def test_demo_ends_by_parsing_images(folder, tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = run_cli(["demo", *SMOKE, "--iterations", "1", "--out", out, "--images", folder], capsys)
    assert code == 1, err  # the corrupt file of --images was skipped
    assert "parsed 4 SynthCrowd val images" in stdout and "hparse predict --checkpoint" in stdout
    assert len(list((out / "predict_val" / "overlay").glob("*.png"))) == 4
    assert {p.name for p in (out / "predict_images" / "overlay").glob("*.png")} >= {"gray.png", "rgba.png"}
    assert "corrupt.jpg" in err


def test_demo_checks_images_before_training(tmp_path, capsys):
    code, _, err = run_cli(["demo", *SMOKE, "--out", tmp_path / "demo", "--images", tmp_path / "none"], capsys)
    assert code == 2 and one_line_error(err) and "--images" in err
    assert not (tmp_path / "demo" / "checkpoint.pt").exists()


def test_train_model_choices_come_from_the_recipes(monkeypatch, capsys):
    model = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                 if a.dest == "model")
    assert list(model.choices) == list(METHODS)

    def later_method(profile, dataset="synth", **flags):
        raise ValueError("the recipe of a method added later was asked for")

    monkeypatch.setitem(METHODS, "later_method", later_method)
    code, _, err = run_cli(["train", *SMOKE, "--model", "later_method"], capsys)
    assert code == 2 and "the recipe of a method added later was asked for" in err
    code, _, err = run_cli(["train", *SMOKE, "--model", "no_such_method"], capsys)
    assert code == 2 and "invalid choice" in err and "later_method" in err


def test_error_breakdown_of_a_run(run, tmp_results):
    """Own detections against ground-truth boxes, every part's pixels split into itself / background / mirror /
    other (shares of one whole), the score with left and right merged; the record refuses to be replaced by another
    run's without force."""
    from hparse.engine import load_result
    from hparse.engine.results import ResultConflictError
    from hparse.experiments.error_breakdown import KEYS, error_breakdown

    metrics = error_breakdown(run / "checkpoint.pt", val_images=2, device="cpu", profile="smoke")
    assert set(metrics["detections"]) == {"own", "gt_boxes"}
    assert all(set(KEYS) <= set(values) for values in metrics["detections"].values())
    for kind in KEYS:
        assert metrics["detector_cost"][kind] == pytest.approx(
            metrics["detections"]["gt_boxes"][kind] - metrics["detections"]["own"][kind])
    assert metrics["confusion"]
    for shares in metrics["confusion"].values():
        assert shares["pixels"] > 0
        assert sum(shares[k] for k in ("itself", "background", "mirror", "other")) == pytest.approx(1.0)
    assert set(KEYS) <= set(metrics["left_right_merged"])
    record = load_result("parsing_rcnn/error_breakdown", "smoke", root=tmp_results)
    assert record["config"]["val_images"] == 2
    with pytest.raises(ResultConflictError):
        error_breakdown(run / "checkpoint.pt", val_images=3, device="cpu", profile="smoke")


def test_merging_left_and_right():
    """The second part of every flip pair becomes the first; every other label (and the ignore label) stays."""
    from hparse.data import CIHP_LABELS
    from hparse.experiments.error_breakdown import merge_left_right

    pairs = CIHP_LABELS.flip_pairs
    labels = torch.arange(CIHP_LABELS.num_classes)
    merged = merge_left_right(labels, pairs)
    for left, right in pairs:
        assert merged[left] == left and merged[right] == left
    kept = [c for c in range(CIHP_LABELS.num_classes) if c not in {right for _, right in pairs}]
    assert torch.equal(merged[kept], labels[kept])
    assert merge_left_right(torch.tensor([[255, 15]], dtype=torch.uint8), pairs).tolist() == [[255, 14]]


def test_person_breakdown_sorts_zero_iou_classes():
    """One person, four classes (hair, face, upper clothes, pants) and background. The prediction gets hair and face
    exactly, adds a hat (spurious), leaves the pants out (missed) and puts the upper clothes where none are
    (misplaced): its mean IoU over background, hair, face, clothes, pants and hat is (IoU_bg + 1 + 1 + 0 + 0 + 0) / 6,
    below 0.5; without the three zero classes it is at least 2/3."""
    from hparse.data import CIHP_LABELS
    from hparse.experiments.error_breakdown import person_breakdown

    semantic = torch.zeros(8, 8, dtype=torch.long)
    semantic[0:2, 2:6], semantic[2:4, 2:6], semantic[4:6, 2:4], semantic[6:8, 2:6] = 2, 13, 5, 9
    instances = (semantic > 0).long()
    pred = semantic.clone()
    pred[6:8, 2:6] = 0  # pants missed
    pred[4:6, 2:4] = 0
    pred[4:6, 0:2] = 5  # upper clothes off the person: misplaced
    pred[0, 0] = 1  # a hat pixel on background: spurious
    # background IoU: pred background = 64 - 21 = 43 pixels, gt background = 64 - 28 = 36, overlap 36 - 5 = 31
    out = person_breakdown([{"person_parts": pred[None]}], [{"semantic": semantic, "instances": instances}],
                           CIHP_LABELS.names)
    assert out["persons"] == 1
    zero = out["zero_iou"]
    assert zero["Hat"] == {"present": 1, "spurious": 1, "missed": 0, "misplaced": 0}
    assert zero["Pants"] == {"present": 1, "spurious": 0, "missed": 1, "misplaced": 0}
    assert zero["Upper-clothes"] == {"present": 1, "spurious": 0, "missed": 0, "misplaced": 1}
    assert zero["Hair"]["present"] == 1 and zero["Hair"]["spurious"] + zero["Hair"]["missed"] == 0
    background = 31 / (43 + 36 - 31)
    assert out["median_best_iou"] == pytest.approx((background + 2) / 6)
    assert out["share_at_50"] == 0.0
    assert out["share_at_50_without_spurious"] == (1.0 if (background + 2) / 5 >= 0.5 else 0.0)
    assert out["share_at_50_without_zero_classes"] == 1.0
    assert out["spurious_per_person"] == 1.0 and out["missed_per_person"] == 1.0


def test_left_right_by_view_counts_swaps_per_view():
    """Two people: a front-facing one whose arms are labelled right, a back-facing one whose arms are swapped, and
    a leg pixel predicted as background (not counted: only pixels predicted as either side of their pair count)."""
    from hparse.data import CIHP_LABELS
    from hparse.experiments.error_breakdown import left_right_by_view

    semantic = torch.zeros(4, 8, dtype=torch.long)
    semantic[:, 0:2], semantic[:, 2:4] = 14, 15  # person 1: Left-arm, Right-arm (4 pixels each)
    semantic[:, 4:6], semantic[:, 6:7], semantic[:, 7] = 14, 15, 16  # person 2: arms, one Left-leg column
    instances = torch.ones(4, 8, dtype=torch.long)
    instances[:, 4:] = 2
    pred = semantic.clone()
    pred[:, 4:6], pred[:, 6:7], pred[:, 7] = 15, 14, 0  # person 2: both arms swapped, the leg missed
    pred[0, 0] = 13  # one of person 1's arm pixels called face: neither side, not counted
    sample = {"semantic": semantic, "instances": instances, "meta": {"view": ["front", "back"]}}
    out = left_right_by_view([{"semantic": pred}], [sample], CIHP_LABELS.flip_pairs)
    assert out["front"] == {"persons": 1, "pixels": 15, "accuracy": 1.0}
    assert out["back"] == {"persons": 1, "pixels": 12, "accuracy": 0.0}


def test_augmented_inference_table_of_two_seeds(run, tmp_path, tmp_results):
    """Table 8 †: two seeds of one recipe scored plain, flipped and flipped at three scales; per-seed numbers, a
    summary per setting and a verdict against the plain model; a run of another recipe is refused."""
    from hparse.experiments.augmented_inference import KEYS, SETTINGS, _main, augmented_inference_table

    second = tmp_path / "seed1"
    assert main(["train", *SMOKE, "--iterations", "2", "--seed", "1", "--out", str(second)]) == 0
    table = augmented_inference_table([run, second], val_images=2, device="cpu")
    assert sorted(table["per_seed"]) == [0, 1]
    for setting in SETTINGS:
        assert table[setting]["seeds"] == [0, 1]
        assert "mIoU" in table[setting]["mean"] and set(table["per_seed"][0][setting]) == set(KEYS)
    assert set(table["verdicts"]) == {"flip", "flip_multiscale"}
    other = tmp_path / "other"
    assert main(["train", *SMOKE, "--iterations", "1", "--no-gce", "--out", str(other)]) == 0
    with pytest.raises(ValueError, match="not a seed of the first run"):
        augmented_inference_table([run, other], val_images=1, device="cpu")
    _main(["--runs", str(run), str(second), "--val-images", "1", "--profile", "smoke", "--record", "test/tta"])
    assert (tmp_results / "smoke" / "test" / "tta.json").exists()
