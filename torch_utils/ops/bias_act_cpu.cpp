// CPU kernel of bias_act.py for the piecewise-linear activations (linear, relu, lrelu) with
// gain > 0, one pass over memory per call:
//
//   mode 0 (forward):         y  = clamp(act((x + b) * gain), -clamp, clamp)
//   mode 2 (grad from y):     dx = g * gain * act'(y) * (clamp < 0 or -clamp < y < clamp)
//
// act(v * gain) == act(v) * gain for these activations when gain > 0, and their derivative
// follows from the output's sign, so the backward reads y and g only. The PyTorch stand-in
// it replaces made three passes forward (add, activation, clamp) and three backward.
//
// Tensors are dense (contiguous or channels-last); b runs along `dim`. In any dense layout the
// element at memory offset o belongs to channel (o / stride(dim)) % size(dim), so the kernel
// walks memory linearly: blocks of stride(dim) elements share one bias (NCHW), or, when
// stride(dim) == 1 (channels-last), every row of size(dim) elements holds the whole bias.
//
// x, b, y, g and dx are all float32 or all bfloat16 (a CPU bf16 block's, see
// torch_utils/precision.py); bf16 elements are computed on in float32 and rounded once.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "cpu_elements.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace {

using triplane3d_cpu::dispatch_elem;
using triplane3d_cpu::elements;
using triplane3d_cpu::load;
using triplane3d_cpu::store;

constexpr int64_t kGrain = 1 << 15;  // elements per task: big enough to hide thread start-up

// The activation's kind (0 linear, 1 relu, 2 lrelu) and whether it clamps are compile-time
// template arguments, so that GCC vectorises every loop below (selects become blends). With
// run-time branches in the element function the loops stayed scalar, and the clamped forward
// took twice as long as the unclamped one.
struct Act {
    float alpha;  // lrelu slope
    float gain;
    float clamp;  // used only when the kernel is instantiated with clamping
};

template <int K, bool CLAMP>
inline float act_forward(float v, const Act& a) {
    v *= a.gain;
    // max/min rather than selects: the bfloat16 loops (whose stores are integer arithmetic)
    // stayed scalar and branchy with selects, 20x slower; the results are the same.
    if (K == 1) v = std::max(v, 0.f);
    if (K == 2) v = std::max(v, 0.f) + a.alpha * std::min(v, 0.f);
    if (CLAMP) v = std::min(std::max(v, -a.clamp), a.clamp);
    return v;
}

template <int K, bool CLAMP>
inline float act_grad(float g, float y, const Act& a) {
    // Arithmetic on 0/1 masks rather than selects, so that the bfloat16 loops vectorise too
    // (exact: pos * gain + (1 - pos) * gain * alpha is one of the two terms).
    const float pos = static_cast<float>(y > 0.f);
    float slope = a.gain;
    if (K == 1) slope = pos * a.gain;
    if (K == 2) slope = pos * a.gain + (1.f - pos) * (a.gain * a.alpha);
    if (CLAMP) slope *= static_cast<float>(y > -a.clamp) * static_cast<float>(y < a.clamp);
    return g * slope;
}

// Calls body with std::integral_constant values for (kind, clamp).
template <typename F>
void dispatch(int64_t kind, bool clamp, F body) {
    using I0 = std::integral_constant<int, 0>;
    using I1 = std::integral_constant<int, 1>;
    using I2 = std::integral_constant<int, 2>;
    using T = std::true_type;
    using N = std::false_type;
    if (kind == 0) clamp ? body(I0(), T()) : body(I0(), N());
    else if (kind == 1) clamp ? body(I1(), T()) : body(I1(), N());
    else clamp ? body(I2(), T()) : body(I2(), N());
}

template <int K, bool CLAMP, typename T>
void forward_kernel(const T* x, const T* b, T* y, int64_t n, int64_t C, int64_t inner, const Act& a) {
    if (b == nullptr) {
        at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
#pragma omp simd
            for (int64_t i = i0; i < i1; ++i) store(y, i, act_forward<K, CLAMP>(load(x, i), a));
        });
    } else if (inner == 1) {  // channels-last: rows of C
        const int64_t rows = n / C;
        at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / C), [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) {
                const T* xr = x + r * C;
                T* yr = y + r * C;
#pragma omp simd
                for (int64_t c = 0; c < C; ++c) store(yr, c, act_forward<K, CLAMP>(load(xr, c) + load(b, c), a));
            }
        });
    } else {  // blocks of `inner` elements share channel (block % C)
        const int64_t blocks = n / inner;
        at::parallel_for(0, blocks, std::max<int64_t>(1, kGrain / inner), [&](int64_t k0, int64_t k1) {
            for (int64_t k = k0; k < k1; ++k) {
                const float bias = load(b, k % C);
                const T* xk = x + k * inner;
                T* yk = y + k * inner;
#pragma omp simd
                for (int64_t j = 0; j < inner; ++j) store(yk, j, act_forward<K, CLAMP>(load(xk, j) + bias, a));
            }
        });
    }
}

template <int K, bool CLAMP, typename T>
void grad_kernel(const T* g, const T* y, T* dx, int64_t n, const Act& a) {
    at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) store(dx, i, act_grad<K, CLAMP>(load(g, i), load(y, i), a));
    });
}

}  // namespace

at::Tensor bias_act_cpu(const at::Tensor& x, const at::Tensor& b, const at::Tensor& y,
                           const at::Tensor& g, int64_t mode, int64_t act_index, int64_t dim,
                           double alpha, double gain, double clamp) {
    TORCH_CHECK(act_index >= 0 && act_index <= 2, "bias_act_cpu: act_index must be 0 (linear), 1 (relu) or 2 (lrelu)");
    TORCH_CHECK(gain > 0, "bias_act_cpu: gain must be positive, got ", gain);
    const Act a{static_cast<float>(alpha), static_cast<float>(gain), static_cast<float>(clamp)};
    const bool clamps = clamp >= 0;
    if (mode == 0) {
        TORCH_CHECK(x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
                    "bias_act_cpu: x must be a float32 or bfloat16 CPU tensor");
        TORCH_CHECK(x.is_non_overlapping_and_dense(), "bias_act_cpu: x must be dense (contiguous or channels-last)");
        auto out = at::empty_like(x);
        const bool has_b = b.numel() > 0;
        if (has_b) {
            TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(dim) && b.scalar_type() == x.scalar_type() &&
                        b.is_contiguous(),
                        "bias_act_cpu: b must be a contiguous vector of x.size(dim) elements in x's dtype");
        }
        const int64_t C = has_b ? x.size(dim) : 1, inner = has_b ? x.stride(dim) : 1;
        dispatch_elem(x, [&](auto tag) {
            using T = decltype(tag);
            dispatch(act_index, clamps, [&](auto kind, auto clamped) {
                forward_kernel<decltype(kind)::value, decltype(clamped)::value>(
                    elements<const T>(x), has_b ? elements<const T>(b) : nullptr, elements<T>(out), x.numel(), C,
                    inner, a);
            });
        });
        return out;
    }
    TORCH_CHECK(mode == 2, "bias_act_cpu: mode must be 0 (forward) or 2 (gradient from y), got ", mode);
    TORCH_CHECK((y.scalar_type() == at::kFloat || y.scalar_type() == at::kBFloat16) &&
                    g.scalar_type() == y.scalar_type(),
                "bias_act_cpu: y and g must both be float32 or both bfloat16");
    TORCH_CHECK(y.is_non_overlapping_and_dense() && g.strides() == y.strides() && g.sizes() == y.sizes(),
                "bias_act_cpu: y must be dense and g must have y's sizes and strides");
    auto dx = at::empty_like(y);
    dispatch_elem(y, [&](auto tag) {
        using T = decltype(tag);
        dispatch(act_index, clamps, [&](auto kind, auto clamped) {
            grad_kernel<decltype(kind)::value, decltype(clamped)::value>(elements<const T>(g), elements<const T>(y),
                                                                          elements<T>(dx), y.numel(), a);
        });
    });
    return dx;
}

TORCH_LIBRARY_FRAGMENT(triplane3d_cpu, m) {
    m.def("bias_act_cpu", &bias_act_cpu);  // fused bias + linear/relu/lrelu + gain + clamp and its gradient (CPU)
}
