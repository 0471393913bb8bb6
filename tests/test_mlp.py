"""The CPU kernel of torch_utils.ops.mlp (softplus MLP) against its PyTorch reference."""

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import cpu_kernels, mlp
from training.triplane import TriPlaneDecoder
from training_fixtures import KernelSpy


@pytest.fixture
def spy(cpu_kernels_module, monkeypatch):
    s = KernelSpy(cpu_kernels_module)
    monkeypatch.setattr(cpu_kernels.plugin, "_module", s)
    return s


def _params(sizes, seed=0, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(sizes[i + 1], sizes[i], generator=gen) / sizes[i] ** 0.5 for i in range(len(sizes) - 1)]
    biases = [torch.randn(sizes[i + 1], generator=gen) * 0.3 for i in range(len(sizes) - 1)]
    return [t.requires_grad_(requires_grad) for t in weights], [t.requires_grad_(requires_grad) for t in biases]


def _grads(fn, x, weights, biases, dy):
    out = fn(x, weights, biases)
    return out, torch.autograd.grad(out, [x, *weights, *biases], dy)


@pytest.mark.parametrize("sizes, points", [
    ([5, 7, 3], 131),                 # widths below one vector, a partial tile
    ([16, 32, 32, 32, 17], 4096 + 5),  # the demo's decoder, across two gradient blocks
    ([32, 64, 33], 300),              # eg3d-small's
    ([32, 64, 64, 64, 33], 70),       # the paper's, at 64 wide
    ([3, 64], 1),                     # one layer (no softplus), one point
    ([20, 48, 1], 67),
])
def test_kernel_matches_reference(spy, sizes, points):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(2, points, sizes[0], generator=gen) * 3).requires_grad_(True)
    weights, biases = _params(sizes)
    dy = torch.randn(2, points, sizes[-1], generator=gen)
    out, grads = _grads(mlp.softplus_mlp, x, weights, biases, dy)
    assert spy.calls == ["mlp_softplus_forward", "mlp_softplus_backward"]
    ref, ref_grads = _grads(mlp.softplus_mlp_ref, x, weights, biases, dy)
    assert out.shape == (2, points, sizes[-1])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * (1 + r.abs().max().item()))


def test_extreme_inputs_stay_finite_and_match(spy):
    """softplus and its slope far out on both sides (exp of -87 and below, linear tail)."""
    weights = [torch.eye(16) * 1.0, torch.ones(2, 16) / 16]
    biases = [torch.zeros(16), torch.zeros(2)]
    x = torch.linspace(-200, 200, 64 * 16).reshape(64, 16).requires_grad_(True)
    out = mlp.softplus_mlp(x, weights, biases)
    ref = mlp.softplus_mlp_ref(x, weights, biases)
    (gx,) = torch.autograd.grad(out.sum(), x)
    (ref_gx,) = torch.autograd.grad(ref.sum(), x)
    assert spy.calls == ["mlp_softplus_forward", "mlp_softplus_backward"]
    assert torch.isfinite(out).all() and torch.isfinite(gx).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-5, atol=1e-7)


def test_denormals_are_flushed_inside_the_kernel_only(spy):
    """Far-negative pre-activations give hidden values and slopes below the smallest normal float
    (exp(-100) = 3.7e-44): the kernel flushes them to zero (they cost a microcode assist each),
    which leaves the outputs and gradients as the reference's; and the calling thread's float
    mode is restored afterwards, so torch ops outside still keep denormals."""
    tiny = torch.finfo(torch.float32).tiny
    weights = [torch.eye(16), torch.eye(16), torch.ones(1, 16)]
    biases = [torch.full((16,), -100.0), torch.zeros(16), torch.zeros(1)]
    x = torch.randn(256, 16).requires_grad_(True)
    out = mlp.softplus_mlp(x, weights, biases)
    (gx,) = torch.autograd.grad(out.sum(), x)
    ref = mlp.softplus_mlp_ref(x, weights, biases)
    (ref_gx,) = torch.autograd.grad(ref.sum(), x)
    assert spy.calls == ["mlp_softplus_forward", "mlp_softplus_backward"]
    # The exact input gradient is sigmoid(h) * sigmoid(x - 100) ~ exp(x - 100) / 2: denormal.
    exact = torch.sigmoid(x.detach().double() - 100) / 2
    assert 0 < exact.max() < tiny
    assert torch.count_nonzero(gx) == 0  # the kernel's are flushed
    torch.testing.assert_close(gx, ref_gx, rtol=0, atol=tiny)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert (torch.tensor([tiny]) / 16).item() > 0  # this thread's denormals survive the kernel


def test_input_without_gradient_skips_dx(spy):
    weights, biases = _params([8, 16, 4])
    x = torch.randn(100, 8)
    out = mlp.softplus_mlp(x, weights, biases)
    grads = torch.autograd.grad(out.sum(), weights + biases)
    ref_grads = torch.autograd.grad(mlp.softplus_mlp_ref(x, weights, biases).sum(), weights + biases)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_bitwise_reproducible_across_thread_counts(cpu_kernels_module):
    weights, biases = _params([16, 32, 32, 17])
    x = torch.randn(3 * 2048 + 100, 16, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    dy = torch.randn(x.shape[0], 17, generator=torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(_grads(mlp.softplus_mlp, x, weights, biases, dy))
    finally:
        torch.set_num_threads(before)
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0])
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, results[0][1]))


def test_second_order_gradients_go_through_the_reference(spy):
    """A backward with create_graph gives the reference's second derivatives."""
    weights, biases = _params([6, 16, 16, 3])
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(4)).requires_grad_(True)

    def penalty(fn):
        (gx,) = torch.autograd.grad(fn(x, weights, biases).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), weights + biases, allow_unused=True)

    for g, r in zip(penalty(mlp.softplus_mlp), penalty(mlp.softplus_mlp_ref)):
        assert (g is None) == (r is None)  # the last bias does not reach d out / d x
        if r is not None:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    assert "mlp_softplus_forward" in spy.calls


@pytest.mark.parametrize("case", ["wide", "float64", "impl_ref", "disabled"])
def test_reference_path_where_the_kernel_does_not_apply(spy, case):
    sizes = [8, 65, 4] if case == "wide" else [8, 16, 4]
    weights, biases = _params(sizes, requires_grad=False)
    x = torch.randn(10, 8)
    if case == "float64":
        x, weights, biases = x.double(), [w.double() for w in weights], [b.double() for b in biases]
    if case == "disabled":
        with cpu_kernels.kernels_enabled(False):
            out = mlp.softplus_mlp(x, weights, biases)
    else:
        out = mlp.softplus_mlp(x, weights, biases, impl="ref" if case == "impl_ref" else None)
    assert spy.calls == []
    torch.testing.assert_close(out, mlp.softplus_mlp_ref(x, weights, biases))


def _squashed(z, start, scale, shift):
    """The squash written out column by column (independent of the module's reference)."""
    cols = [z[..., c] if c < start else torch.sigmoid(z[..., c]) * scale - shift for c in range(z.shape[-1])]
    return torch.stack(cols, dim=-1)


@pytest.mark.parametrize("start", [0, 1, 15, 16, 17])  # all, the decoder's, one vector boundary, last, none
def test_squashed_output_matches_the_written_out_formula(spy, start):
    sizes, scale, shift = [16, 32, 32, 17], 2.004, 1.002
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(2 * 64 + 9, sizes[0], generator=gen) * 2).requires_grad_(True)
    weights, biases = _params(sizes)
    dy = torch.randn(x.shape[0], sizes[-1], generator=gen)
    out = mlp.softplus_mlp(x, weights, biases, squash=(start, scale, shift))
    grads = torch.autograd.grad(out, [x, *weights, *biases], dy)
    assert spy.calls == ["mlp_softplus_forward", "mlp_softplus_backward"]
    ref = _squashed(mlp.softplus_mlp_ref(x, weights, biases), start, scale, shift)
    ref_grads = torch.autograd.grad(ref, [x, *weights, *biases], dy)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * (1 + r.abs().max().item()))
    torch.testing.assert_close(mlp.softplus_mlp_ref(x, weights, biases, squash=(start, scale, shift)), ref)


def test_squashed_second_order_gradients_go_through_the_reference(spy):
    weights, biases = _params([6, 16, 4])
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(6)).requires_grad_(True)
    squash = (1, 2.0, 1.0)

    def penalty(out):
        (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), weights, allow_unused=True)

    got = penalty(mlp.softplus_mlp(x, weights, biases, squash=squash))
    want = penalty(_squashed(mlp.softplus_mlp_ref(x, weights, biases), *squash))
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    assert "mlp_softplus_forward" in spy.calls


def test_bad_arguments_are_named():
    weights, biases = _params([4, 8, 2], requires_grad=False)
    with pytest.raises(ValueError, match="impl"):
        mlp.softplus_mlp(torch.randn(3, 4), weights, biases, impl="cuda")
    with pytest.raises(ValueError, match="one bias per weight"):
        mlp.softplus_mlp(torch.randn(3, 4), weights, biases[:1])
    with pytest.raises(ValueError, match="squash must start"):
        mlp.softplus_mlp(torch.randn(3, 4), weights, biases, squash=(3, 1.0, 0.0))


def test_decoder_equals_its_layers_applied_in_turn(spy):
    """TriPlaneDecoder through the kernel equals FullyConnectedLayer modules with softplus."""
    torch.manual_seed(0)
    dec = TriPlaneDecoder(16, hidden=32, out_features=16, num_layers=4)
    feats = torch.randn(2, 300, 16)
    sigma, rgb = dec(feats)
    assert spy.calls == ["mlp_softplus_forward"]
    x = feats
    for i, layer in enumerate(dec.layers):
        x = layer(x)
        x = F.softplus(x) if i < dec.num_layers - 1 else x
    torch.testing.assert_close(sigma, x[..., :1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rgb, torch.sigmoid(x[..., 1:]) * 2.004 - 1.002, rtol=1e-5, atol=1e-5)
