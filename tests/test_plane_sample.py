"""The CPU kernel of torch_utils.ops.plane_sample against the grid_sample reference path."""

import pytest
import torch

from torch_utils.ops import plane_sample
from training_fixtures import KernelSpy


@pytest.fixture
def kernel_module(cpu_kernels_module):
    return cpu_kernels_module


def _inputs(b, p, c, h, w, m, seed=0, spread=1.3):
    gen = torch.Generator().manual_seed(seed)
    planes = torch.randn(b, p, c, h, w, generator=gen)
    grid = (torch.rand(b, p, m, 2, generator=gen) * 2 - 1) * spread  # some points outside [-1, 1]
    # Exact pixel centres and plane edges, where bilinear weights are 0 or 1 (align_corners=False).
    special = torch.tensor([[-1 + 1 / w, -1 + 1 / h], [1.0, -1.0], [-1 - 0.5 / w, 0.25]])[:m]
    grid[:, :, :len(special)] = special
    return planes, grid


@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 6, 40), (1, 3, 33, 16, 16, 300), (3, 2, 1, 4, 9, 17),
                                   (1, 3, 32, 64, 64, 2000)])
def test_kernel_matches_grid_sample(kernel_module, monkeypatch, shape):
    spy = KernelSpy(kernel_module)
    monkeypatch.setattr(plane_sample._plugin, "_module", spy)
    planes, grid = _inputs(*shape)
    planes.requires_grad_(True)
    out = plane_sample.sample_mean(planes, grid)
    ref = plane_sample.sample_mean_ref(planes, grid)
    assert out.shape == (shape[0], shape[5], shape[2])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (g,) = torch.autograd.grad(out, planes, dy)
    (g_ref,) = torch.autograd.grad(ref, planes, dy)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)
    assert spy.calls == ["sample_mean_forward", "sample_mean_backward"]


def _layout(planes: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as `planes` [B,P,C,H,W] in another memory layout (a strided view)."""
    b, p, c, h, w = planes.shape
    if layout == "plane-channel-last":  # [B,P,H,W,C] in memory
        return planes.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    if layout == "triplane-channels-last":  # a view of a channels-last [B, P*C, H, W] backbone output
        flat = planes.reshape(b, p * c, h, w).contiguous(memory_format=torch.channels_last)
        return flat.view(b, p, c, h, w)
    if layout == "transposed":  # [B,P,C,W,H] in memory: channels not contiguous
        return planes.transpose(3, 4).contiguous().transpose(3, 4)
    raise ValueError(layout)


LAYOUTS = ["plane-channel-last", "triplane-channels-last", "transposed"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kernel_takes_any_plane_strides(kernel_module, layout):
    """Planes that are a strided view (read in place when the channels are contiguous, else
    through a scratch copy) give the same values and a gradient with the planes' own strides."""
    planes, grid = _inputs(2, 3, 6, 8, 5, 50, seed=1)
    strided = _layout(planes, layout).requires_grad_(True)
    assert (strided.stride(2) == 1) == (layout != "transposed")
    out = plane_sample.sample_mean(strided, grid)
    torch.testing.assert_close(out, plane_sample.sample_mean_ref(planes, grid), rtol=1e-5, atol=1e-6)
    (g,) = torch.autograd.grad(out.sum(), strided)
    (g_ref,) = torch.autograd.grad(plane_sample.sample_mean_ref(strided, grid).sum(), strided)
    assert g.stride() == strided.stride()
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["contiguous", "triplane-channels-last"])
@pytest.mark.parametrize("size", [32, 192])  # a plane per thread's cache, or threads share one
def test_kernel_is_bitwise_reproducible_across_thread_counts(kernel_module, layout, size):
    planes, grid = _inputs(2, 3, 8, size, size, 5000, seed=2, spread=0.9)
    planes = (planes if layout == "contiguous" else _layout(planes, layout)).requires_grad_(True)
    dy = torch.randn(2, 5000, 8, generator=torch.Generator().manual_seed(4))
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out = plane_sample.sample_mean(planes, grid)
            results.append((out, torch.autograd.grad(out, planes, dy)[0]))
    finally:
        torch.set_num_threads(before)
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


def test_far_and_nan_points_sample_zero(kernel_module):
    planes, _ = _inputs(1, 3, 4, 6, 6, 1)
    grid = torch.tensor([[1e20, 0.0], [-1e20, 3.0], [float("nan"), 0.0], [0.0, float("inf")]]).expand(1, 3, 4, 2)
    planes.requires_grad_(True)
    out = plane_sample.sample_mean(planes, grid.contiguous())
    assert torch.equal(out, torch.zeros(1, 4, 4))
    (g,) = torch.autograd.grad(out.sum(), planes)
    assert torch.equal(g, torch.zeros_like(planes))


def test_grid_that_needs_gradient_uses_the_reference_path(kernel_module, monkeypatch):
    spy = KernelSpy(kernel_module)
    monkeypatch.setattr(plane_sample._plugin, "_module", spy)
    planes, grid = _inputs(1, 3, 3, 6, 6, 20, spread=0.8)
    grid.requires_grad_(True)
    out = plane_sample.sample_mean(planes, grid)
    (g_grid,) = torch.autograd.grad(out.sum(), grid)
    (g_ref,) = torch.autograd.grad(plane_sample.sample_mean_ref(planes, grid).sum(), grid)
    assert spy.calls == [] and torch.equal(g_grid, g_ref) and g_grid.abs().sum() > 0


def test_reference_path_for_other_dtypes_and_impl_ref(kernel_module, monkeypatch):
    spy = KernelSpy(kernel_module)
    monkeypatch.setattr(plane_sample._plugin, "_module", spy)
    planes, grid = _inputs(1, 3, 2, 5, 5, 10)
    out64 = plane_sample.sample_mean(planes.double(), grid.double())
    out_ref = plane_sample.sample_mean(planes, grid, impl="ref")
    assert spy.calls == []
    torch.testing.assert_close(out64.float(), out_ref)


@pytest.mark.parametrize("planes_shape,grid_shape,match", [
    ((1, 3, 2, 4), (1, 3, 5, 2), r"planes must be \[B,P,C,H,W\]"),
    ((1, 3, 2, 4, 4), (1, 2, 5, 2), r"grid must be \[B,P,M,2\]"),
    ((2, 3, 2, 4, 4), (1, 3, 5, 2), r"grid must be \[B,P,M,2\]"),
    ((1, 3, 2, 4, 4), (1, 3, 5, 3), r"grid must be \[B,P,M,2\]"),
])
def test_bad_shapes_are_named(planes_shape, grid_shape, match):
    with pytest.raises(ValueError, match=match):
        plane_sample.sample_mean(torch.zeros(planes_shape), torch.zeros(grid_shape))


def test_bad_impl_is_named():
    with pytest.raises(ValueError, match="impl must be None or 'ref'"):
        plane_sample.sample_mean(torch.zeros(1, 3, 2, 4, 4), torch.zeros(1, 3, 5, 2), impl="cuda")


# ---------------------------------------------------------------------------- CUDA kernel

no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def cuda_spy(monkeypatch):
    """The built CUDA plugin behind a spy (a build failure on a GPU machine fails the test)."""
    module = plane_sample._cuda_plugin.get()
    assert module is not None, f"plane_sample CUDA plugin did not build: {plane_sample._cuda_plugin.failed_reason}"
    spy = KernelSpy(module)
    monkeypatch.setattr(plane_sample._cuda_plugin, "_module", spy)
    return spy


@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 6, 40), (1, 3, 33, 16, 16, 300), (3, 2, 1, 4, 9, 17),
                                   (4, 3, 32, 256, 256, 20000)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.cuda
@no_cuda
def test_cuda_kernel_matches_grid_sample(cuda_spy, shape, channels_last):
    planes, grid = (t.cuda() for t in _inputs(*shape))
    if channels_last:  # the planes as a permuted view of channel-last memory
        planes = planes.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    planes.requires_grad_(True)
    out = plane_sample.sample_mean(planes, grid)
    ref = plane_sample.sample_mean_ref(planes, grid)
    assert out.shape == (shape[0], shape[5], shape[2])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).cuda()
    (g,) = torch.autograd.grad(out, planes, dy)
    (g_ref,) = torch.autograd.grad(ref, planes, dy)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)
    assert cuda_spy.calls == ["sample_mean_forward", "sample_mean_backward"]


@pytest.mark.cuda
@no_cuda
def test_cuda_far_and_nan_points_sample_zero(cuda_spy):
    planes = torch.randn(1, 3, 4, 6, 6, device="cuda", requires_grad=True)
    grid = torch.tensor([[1e20, 0.0], [-1e20, 3.0], [float("nan"), 0.0], [0.0, float("inf")]]).expand(1, 3, 4, 2)
    out = plane_sample.sample_mean(planes, grid.contiguous().cuda())
    assert torch.equal(out, torch.zeros(1, 4, 4, device="cuda"))
    (g,) = torch.autograd.grad(out.sum(), planes)
    assert torch.equal(g, torch.zeros_like(planes))
    assert cuda_spy.calls == ["sample_mean_forward", "sample_mean_backward"]


@pytest.mark.cuda
@no_cuda
def test_cuda_deterministic_mode_and_grid_gradients_use_the_reference(cuda_spy):
    planes, grid = (t.cuda() for t in _inputs(1, 3, 3, 6, 6, 20, spread=0.8))
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        out = plane_sample.sample_mean(planes, grid)
    finally:
        torch.use_deterministic_algorithms(False)
    torch.testing.assert_close(out, plane_sample.sample_mean_ref(planes, grid))
    plane_sample.sample_mean(planes, grid.requires_grad_(True))
    assert cuda_spy.calls == []

