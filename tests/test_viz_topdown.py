"""Tests of the top-down chapter helpers (hparse.viz.topdown)."""

import pytest
import torch
import torch.nn.functional as F

from hparse.models.heads.gce import NonLocal2d
from hparse.models.heads.parsing_head import ParsingHead
from hparse.viz.topdown import (
    bilinear_label_crops,
    fpn_levels,
    ladder_records,
    ladder_table,
    level_histogram,
    module_cost,
    nonlocal_attention,
    percent,
    short_run_caveat,
)


def test_fpn_levels_follow_fpn_eq1():
    # k = floor(4 + log2(sqrt(wh) / 224)), clipped to 2..5: 224 -> P4, 112 -> P3, 448 -> P5, 10 -> P2, 2000 -> P5.
    boxes = torch.tensor([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 448, 448], [0, 0, 10, 10], [0, 0, 2000, 2000]],
                         dtype=torch.float32)
    assert fpn_levels(boxes, 224).tolist() == [4, 3, 5, 2, 5]
    # A smaller canonical scale moves the same box to a coarser level.
    assert fpn_levels(boxes[:1], 112).tolist() == [5]


def test_level_histogram_counts_every_box():
    boxes = [torch.tensor([[0, 0, 224, 224.0]]), torch.zeros(0, 4), torch.tensor([[0, 0, 10, 10.0], [0, 0, 9, 9.0]])]
    assert level_histogram(boxes, 224) == {"P2": 2, "P3": 0, "P4": 1, "P5": 0}


def test_fpn_levels_rejects_bad_shape():
    with pytest.raises(ValueError, match="boxes must be"):
        fpn_levels(torch.zeros(3), 224)


def test_bilinear_label_crops_invent_labels_on_boundaries():
    labels = torch.zeros(20, 20, dtype=torch.int64)
    labels[:, 10:] = 14  # background | part 14: bilinear blending creates ids in between
    crop = bilinear_label_crops(labels, torch.tensor([[5.0, 0.0, 15.0, 20.0]]), 8)[0]
    invented = ~torch.isin(crop, torch.tensor([0, 14]))
    assert invented.any()
    assert set(crop.unique().tolist()) - {0, 14} <= set(range(1, 14))


def test_module_cost_counts_a_conv():
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    cost = module_cost(conv, (1, 4, 5, 5))
    assert cost["params"] == 8 * 4 * 9 + 8
    assert cost["gflops"] == pytest.approx(2 * 8 * 4 * 9 * 25 / 1e9)
    assert conv.weight.device.type == "cpu"  # the module itself is untouched


def test_gce_head_is_lighter_than_baseline():
    base = module_cost(ParsingHead(256, gce=False, ipbc=False), (1, 256, 32, 32))
    gce = module_cost(ParsingHead(256, gce=True, ipbc=False), (1, 256, 32, 32))
    assert gce["params"] < base["params"] and gce["gflops"] < base["gflops"]


def test_nonlocal_attention_matches_the_block():
    torch.manual_seed(0)
    block = NonLocal2d(8, 4).eval()
    for conv in (block.theta, block.phi, block.g):
        torch.nn.init.normal_(conv.weight)
    x = torch.randn(2, 8, 6, 6)
    attn = nonlocal_attention(block, x)
    assert attn.shape == (2, 36, 9)
    assert torch.allclose(attn.sum(-1), torch.ones(2, 36), atol=1e-5)
    value = block.pool(block.g(x)).flatten(2).transpose(1, 2)
    query = block.theta(x).flatten(2).transpose(1, 2)
    key = block.pool(block.phi(x)).flatten(2).transpose(1, 2)
    assert torch.allclose(attn @ value, F.scaled_dot_product_attention(query, key, value), atol=1e-5)


def test_ladder_records_reads_saved_runs(tmp_results):
    from hparse.engine.results import write_result

    write_result("parsing_rcnn/ladder_0_baseline", {"mIoU": 0.5}, profile="gpu")  # the older name: not read
    write_result("parsing_rcnn/ladder_baseline", {"mean": {"mIoU": 0.25}}, profile="cpu")
    out = ladder_records(["baseline"], None, run_missing=False)
    assert out["source"] == "results" and out["profile"] == "cpu"
    assert out["records"]["baseline"]["metrics"]["mean"]["mIoU"] == 0.25 and out["artefacts"]["baseline"] is None
    # A rung with no saved run and run_missing=False gives nothing rather than mixing sources.
    assert ladder_records(["baseline", "pss"], None, run_missing=False) == {}
    with pytest.raises(ValueError, match="unknown rungs"):
        ladder_records(["nope"], None, run_missing=False)


def test_ladder_records_trains_two_seeds_at_smoke_into_a_temporary_folder(tmp_results):
    from hparse.engine import get_profile

    profile = get_profile("smoke").override(train_images=4, val_images=2)
    out = ladder_records(["baseline", "pss"], profile, iterations=1)
    assert out["source"] == "run" and out["profile"] == "smoke"
    assert out["records"]["pss"]["metrics"]["seeds"] == [0, 1]
    assert out["artefacts"]["pss"]["predictions"].exists() and out["log_dirs"]["pss"].name == "seed0"
    assert not tmp_results.exists()  # nothing of a smoke run lands in results/
    text = ladder_table(out, {"baseline": "base", "pss": "+ PSS"}, keys=("mIoU",))
    assert "--profile smoke --seeds 0 1" in text and "Smoke-test numbers" in text


def test_seed_stats_and_verdicts():
    from hparse.viz.topdown import change_verdicts, seed_stats

    new = {"per_seed": {"0": {"mIoU": 0.1, "APr60": 0.2}, "1": {"mIoU": 0.3, "APr60": 0.4}},
           "mean": {"mIoU": 0.2}, "std": {"mIoU": 0.05}, "seeds": [0, 1]}
    stats = seed_stats(new, ("mIoU", "APr60", "PCP50"))
    assert stats["mean"]["mIoU"] == 0.2 and stats["std"]["mIoU"] == 0.05  # the record's own summary
    assert stats["mean"]["APr60"] == pytest.approx(0.3) and stats["std"]["APr60"] == pytest.approx(0.02 ** 0.5)
    assert stats["mean"]["PCP50"] is None and stats["seeds"] == [0, 1]
    old = seed_stats({"mIoU": 0.4, "iterations": 600}, ("mIoU",), seed=0)  # a one-seed record of the older format
    assert old == {"mean": {"mIoU": 0.4}, "std": {"mIoU": 0.0}, "seeds": [0]}
    far = {"mean": {"mIoU": 0.5}, "std": {"mIoU": 0.01}, "seeds": [0, 1]}
    assert change_verdicts(stats, far, ("mIoU",))["mIoU"] == {"change": pytest.approx(0.3), "exceeds": True}
    near = {"mean": {"mIoU": 0.24}, "std": {"mIoU": 0.01}, "seeds": [0, 1]}
    assert change_verdicts(stats, near, ("mIoU",))["mIoU"]["exceeds"] is False
    assert change_verdicts(old, far, ("mIoU",))["mIoU"]["exceeds"] is None  # one seed: no spread to compare with


def test_markdown_tables_render_tables_as_html():
    from hparse.viz.topdown import MarkdownTables

    out = MarkdownTables("Some **text**.\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert out._repr_markdown_().startswith("Some **text**")
    html = out._repr_html_()
    pytest.importorskip("markdown_it")
    assert "<table>" in html and "<td>2</td>" in html and "<strong>text</strong>" in html


def test_percent_keeps_small_numbers_apart_and_marks_missing_ones():
    assert percent(0.000123) == "0.01" and percent(0.0049) == "0.49" and percent(0.5) == "50.00"
    assert percent(None) == "–" and percent(float("nan")) == "–"


def test_every_table_of_ours_but_a_gpu_run_carries_the_caveat():
    assert short_run_caveat("gpu", 12000, "H100") is None
    text = short_run_caveat("cpu", 300, "cpu (x86_64)")
    assert "`cpu` profile, 300 iterations" in text and "saved run" in text
    assert "trained while this page was built" in short_run_caveat("smoke", 4, "cpu", made_here=True)


def _record(profile, iterations, seeds=(0, 1, 2), **metrics):
    per_seed = {str(seed): {"train_images_per_s": 1.5, **{k: None if v is None else v[i] for k, v in metrics.items()}}
                for i, seed in enumerate(seeds)}
    mean = {k: None if v is None else sum(v) / len(v) for k, v in metrics.items()}
    std = {k: None if v is None else (sum((x - mean[k]) ** 2 for x in v) / (len(v) - 1)) ** 0.5
           for k, v in metrics.items()}
    return {"profile": profile, "metrics": {"per_seed": per_seed, "mean": {**mean, "train_images_per_s": 1.5},
                                            "std": {**std, "train_images_per_s": 0.0}, "seeds": list(seeds)},
            "config": {"train": {"iterations": iterations}}, "provenance": {"device": "cpu (test)"}}


def test_ladder_table_puts_ours_and_the_paper_in_one_table_with_verdicts():
    ladder = {"source": "results", "profile": "cpu", "records": {
        "pss": _record("cpu", 300, mIoU=(0.30, 0.31, 0.32), APp50=None),
        "baseline": _record("cpu", 300, mIoU=(0.10, 0.11, 0.12), APp50=(0.0004, 0.0004, 0.0004)),
        "err": _record("cpu", 300, mIoU=(0.30, 0.33, 0.31), APp50=(0.1, 0.2, 0.3))}}
    paper = {"baseline": ("Table 6", {"mIoU": 47.2, "APp50": 41.4})}
    text = ladder_table(ladder, {"baseline": "base", "pss": "+ PSS", "err": "+ ERR"}, keys=("mIoU", "APp50"),
                        paper=paper)
    lines = text.splitlines()
    assert "profile `cpu`, 300 iterations per rung, seeds [0, 1, 2], cpu (test) (read from results/)" in lines[0]
    assert "mean ± standard deviation over seeds, in %" in lines[0]
    assert lines[4] == "| base | ours | 11.00 ± 1.00 | 0.04 ± 0.00 | – |"
    assert lines[5] == "| | paper (Table 6) | 47.2 | 41.4 | |"
    assert lines[6] == "| + PSS | ours | 31.00 ± 1.00 | – | yes for mIoU +20.00 |"
    assert lines[7] == "| + ERR | ours | 31.33 ± 1.53 | 20.00 ± 10.00 | no: within the spread for all |"
    assert "Reproduce ours: `python -m hparse.experiments.parsing_rcnn_ladder --profile cpu`" in text
    assert "Short-run numbers" in text
    gpu = {"source": "results", "profile": "gpu", "records": {"baseline": _record("gpu", 12000, mIoU=(0.6, 0.6, 0.6))}}
    assert "Short-run" not in ladder_table(gpu, {"baseline": "base"}, keys=("mIoU",))


def test_ablation_table_compares_with_the_model_without_attention():
    from hparse.viz.topdown import ablation_table

    old = {"profile": "cpu", "metrics": {"APr50": 0.2, "iterations": 600}, "provenance": {"device": "cpu (test)"},
           "config": {"train": {"iterations": 600}, "seed": 0}}  # a one-seed record of the older format
    saved = {"profile": "cpu", "records": {"none": old, "concat": {**old, "metrics": {"APr50": 0.3}}}}
    text = ablation_table(saved, {"none": "w/o attention", "concat": "concat"}, keys=("APr50",),
                          paper={"concat": ("Table 5, val", {"APr50": 40.7})})
    assert "| concat | ours | 30.00 | one seed: no spread |" in text
    assert "| | paper (Table 5, val) | 40.7 | |" in text and "seeds [0]" in text
    assert "`python -m hparse.experiments.attention_ablation --profile cpu --seeds 0`" in text
    seeded = {"profile": "cpu", "records": {"none": _record("cpu", 600, APr50=(0.1, 0.1, 0.1)),
                                            "concat": _record("cpu", 600, APr50=(0.3, 0.4, 0.5))}}
    text = ablation_table(seeded, {"none": "w/o attention", "concat": "concat"}, keys=("APr50",))
    assert "| concat | ours | 40.00 ± 10.00 | yes for APr50 +30.00 |" in text


def test_read_saved_log(tmp_path):
    from hparse.viz.topdown import read_saved_log

    path = tmp_path / "log.jsonl"
    path.write_text('{"kind": "train", "step": 1, "loss": 2.0}\n{"kind": "eval", "step": 1, "mIoU": 0.1}\n')
    assert read_saved_log(path) == [{"kind": "train", "step": 1, "loss": 2.0}]
    assert read_saved_log(path, "eval")[0]["mIoU"] == 0.1 and read_saved_log(None) == []


def test_starting_point_note_names_an_earlier_file_only():
    from hparse.models.pretrain import pinned
    from hparse.viz.topdown import starting_point_note

    now = pinned("synthcrowd")
    record = lambda weights: {"config": {"model": {"backbone_weights": weights}}}  # noqa: E731
    assert starting_point_note([record(now), record(now)]) is None
    assert starting_point_note([record(None), record("imagenet")]) is None
    note = starting_point_note([record(now), record("synthcrowd@000000000000")])
    assert "`synthcrowd@000000000000`" in note and f"`{now}`" in note and "--force" in note
