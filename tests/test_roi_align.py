"""hparse.ops.roi_align: the sparse-matrix RoIAlign equals torchvision's, forward and backward."""

import pytest
import torch
import torchvision
from torchvision.ops import roi_align as tv_roi_align

from hparse.ops.roi_align import MultiScaleRoIAlign, interpolation_matrix, roi_align, uses_sparse_path


def _boxes(generator, count, size, margin=0.0):
    xy = torch.rand(count, 2, generator=generator, dtype=torch.float64) * (size - 8) - margin
    wh = torch.rand(count, 2, generator=generator, dtype=torch.float64) * size * 0.6 + 0.3
    return torch.cat((xy, xy + wh), dim=1)


def _both(features, boxes, size, scale, ratio, aligned):
    ours_in = features.clone().requires_grad_(True)
    theirs_in = features.clone().requires_grad_(True)
    ours = roi_align(ours_in, boxes, size, scale, ratio, aligned)
    theirs = tv_roi_align(theirs_in, boxes, size, scale, ratio, aligned)
    weights = torch.randn(theirs.shape, generator=torch.Generator().manual_seed(3), dtype=features.dtype)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    return ours, theirs, ours_in.grad, theirs_in.grad


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [1, 2, 3])
@pytest.mark.parametrize("size", [(7, 7), (14, 10)])
def test_matches_torchvision_forward_and_backward(aligned, ratio, size):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 5, 24, 20, generator=generator, dtype=torch.float64)
    boxes = [_boxes(generator, k, 80, margin=6.0) for k in (4, 0, 7)]  # some boxes cross the image border
    ours, theirs, grad_ours, grad_theirs = _both(features, boxes, size, 0.25, ratio, aligned)
    assert ours.shape == theirs.shape == (11, 5, *size)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-9, atol=1e-9)


def test_edge_cases_far_outside_tiny_and_last_pixel():
    features = torch.randn(1, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rois = torch.tensor([[0, -30.0, -30.0, -10.0, -10.0],   # entirely more than a pixel outside: zeros
                         [0, 2.0, 2.0, 2.0, 2.0],            # degenerate box (forced to one pixel unless aligned)
                         [0, 4.0, 4.0, 6.0, 6.0],            # reaches the last pixel
                         [0, -1.5, 5.2, 7.0, 6.9]], dtype=torch.float64)
    for aligned in (False, True):
        ours, theirs, grad_ours, grad_theirs = _both(features, rois, 3, 1.0, 2, aligned)
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-9, atol=1e-9)
    assert ours[0].abs().max() == 0


def test_float32_and_empty():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(2, 8, 16, 16, generator=generator)
    boxes = [_boxes(generator, 5, 60).float(), _boxes(generator, 3, 60).float()]
    ours, theirs, grad_ours, grad_theirs = _both(features, boxes, 7, 0.25, 2, False)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-5, atol=1e-5)
    empty_in = features.clone().requires_grad_(True)
    empty = roi_align(empty_in, [torch.zeros(0, 4), torch.zeros(0, 4)], 7, 0.25, 2)
    assert empty.shape == (0, 8, 7, 7)
    empty.sum().backward()
    assert empty_in.grad is not None and empty_in.grad.abs().max() == 0


def test_path_choice():
    x = torch.randn(1, 1, 4, 4)
    assert not uses_sparse_path(x, 2)  # no gradient needed: torchvision's kernel
    x.requires_grad_(True)
    assert uses_sparse_path(x, 2)
    assert not uses_sparse_path(x, 0)  # adaptive sampling: torchvision's kernel
    with torch.no_grad():
        assert not uses_sparse_path(x, 2)
    assert not uses_sparse_path(x.detach().half().requires_grad_(True), 2)


def test_interpolation_matrix_rows_sum_to_one_inside():
    rois = torch.tensor([[0, 1.0, 1.0, 9.0, 9.0]])
    matrix = interpolation_matrix(rois, (1, 1, 12, 12), (4, 4), 1.0, 2)
    assert matrix.shape == (16, 144)
    torch.testing.assert_close(matrix.to_dense().sum(1), torch.ones(16))


def test_rejects_malformed_boxes():
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match=r"\(K, 5\)"):
        roi_align(x, torch.zeros(3, 4), 2, 1.0, 2)
    with pytest.raises(ValueError, match="image 0"):
        roi_align(x, [torch.zeros(3, 5)], 2, 1.0, 2)


def test_multiscale_matches_torchvision():
    generator = torch.Generator().manual_seed(4)
    names = ["0", "1", "2", "3"]
    features = {name: torch.randn(2, 4, 64 // 2**i, 64 // 2**i, generator=generator, dtype=torch.float64)
                for i, name in enumerate(names)}
    boxes = [_boxes(generator, 9, 256), _boxes(generator, 6, 256)]
    sizes = [(256, 256), (256, 256)]
    ours_in = {k: v.clone().requires_grad_(True) for k, v in features.items()}
    theirs_in = {k: v.clone().requires_grad_(True) for k, v in features.items()}
    ours = MultiScaleRoIAlign(names, 7, 2)(ours_in, boxes, sizes)
    theirs = torchvision.ops.MultiScaleRoIAlign(names, 7, 2)(theirs_in, boxes, sizes)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    ours.square().sum().backward()
    theirs.square().sum().backward()
    for name in names:
        torch.testing.assert_close(ours_in[name].grad, theirs_in[name].grad, rtol=1e-9, atol=1e-9)


def test_benchmark_smoke_writes_its_result(tmp_results):
    from hparse.benchmarks.roi_align import run
    from hparse.engine import get_profile
    from hparse.engine.results import load_result

    metrics = run(get_profile("smoke"), torch.device("cpu"))
    record = load_result("bench/roi_align", "smoke", root=tmp_results)
    assert record is not None and record["metrics"]["box_14x14"]["speedup_total"] > 0
    for workload in metrics.values():
        assert workload["max_abs_output_difference"] < 1e-9 and workload["max_relative_gradient_difference"] < 1e-9


def test_aligned_pooling_samples_the_label_crops_cells():
    """The models pool with aligned=True: a RoI's cells are sampled where hparse.models.targets takes its label
    crops, so a one-hot label map pooled by RoIAlign and arg-maxed gives back the target exactly; torchvision's default
    (aligned=False) is half a cell off and does not."""
    import torch.nn.functional as F

    from hparse.models.targets import parsing_targets

    g = torch.Generator().manual_seed(0)
    semantic = torch.randint(0, 5, (1, 24, 24), generator=g)
    instances = torch.ones(1, 24, 24, dtype=torch.int64)
    boxes = [torch.tensor([[2.0, 3.0, 18.0, 19.0], [6.0, 5.0, 22.0, 21.0]])]  # one cell per pixel: no ties
    target = parsing_targets([semantic[0]], [instances[0]], boxes, [torch.tensor([1, 1])], 16)
    one_hot = F.one_hot(semantic, 5).permute(0, 3, 1, 2).double()
    for aligned, exact in ((True, True), (False, False)):
        pooler = MultiScaleRoIAlign(["0"], output_size=16, sampling_ratio=1, aligned=aligned)
        labels = pooler({"0": one_hot}, [b.double() for b in boxes], [(24, 24)]).argmax(1)
        assert torch.equal(labels, target) is exact
