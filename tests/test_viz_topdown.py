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

    write_result("parsing_rcnn/ladder_0_baseline", {"mIoU": 0.25}, profile="cpu")
    out = ladder_records(["baseline"], None, run_missing=False)
    assert out["source"] == "results" and out["profile"] == "cpu"
    assert out["records"]["baseline"]["metrics"]["mIoU"] == 0.25
    # A rung with no saved run and run_missing=False gives nothing rather than mixing sources.
    assert ladder_records(["baseline", "pss"], None, run_missing=False) == {}
    with pytest.raises(ValueError, match="unknown rungs"):
        ladder_records(["nope"], None, run_missing=False)


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


def _record(profile, iterations, **metrics):
    return {"profile": profile, "metrics": {"train_images_per_s": 1.5, **metrics},
            "config": {"train": {"iterations": iterations}}, "provenance": {"device": "cpu (test)"}}


def test_ladder_table_states_the_run_and_rows_in_label_order():
    ladder = {"source": "results", "profile": "cpu", "records": {
        "pss": _record("cpu", 300, mIoU=0.2, APp50=None), "baseline": _record("cpu", 300, mIoU=0.1, APp50=0.0004)}}
    text = ladder_table(ladder, {"baseline": "base", "pss": "+ PSS"}, keys=("mIoU", "APp50"))
    lines = text.splitlines()
    assert "profile `cpu`, 300 iterations per rung, cpu (test) (read from results/)" in lines[0]
    assert lines[4] == "| base | 10.00 | 0.04 | 1.50 |" and lines[5] == "| + PSS | 20.00 | – | 1.50 |"
    assert "Short-run numbers" in text
    gpu = {"source": "results", "profile": "gpu", "records": {"baseline": _record("gpu", 12000, mIoU=0.6)}}
    assert "Short-run" not in ladder_table(gpu, {"baseline": "base"}, keys=("mIoU",))
