// CPU kernels of modulate.py: the per-sample channel scalings of StyleGAN2's modulated
// convolution, each one pass over memory.
//
//   scale_channels(x, s)       y[n,c,p] = x[n,c,p] * s[n,c]
//   channel_dot(a, b)          r[n,c]   = sum_p a[n,c,p] * b[n,c,p]
//   epilogue_forward           y = clamp(act((x * d[n,c] + noise[n,p] + bias[c]) * gain))
//   epilogue_backward          from g = dL/dy: dx, dd[n,c], dbias[c], dnoise[n,p]
//   skip_epilogue_forward      y = clamp(x + bias[c]) + skip     (ToRGB's bias and the skip sum)
//   skip_epilogue_backward     from g = dL/dy: dx, dbias[c]      (dskip is g itself)
//
// Element tensors (x, y, their gradients) are float32 or bfloat16 (a CPU bf16 block's
// activations, see torch_utils/precision.py); scales, noise, bias and every sum are float32,
// so bf16 costs one rounding per stored element. The skip epilogue's skip and y are float32
// whatever x is (the running skip image stays float32); its dx has x's dtype.
//
// x is [N,C,H,W] (p runs over the H*W pixels), dense in NCHW or channels-last memory; all
// element tensors of one call share that layout. act is linear, relu or lrelu with gain > 0,
// so the derivative follows from y's sign, as in bias_act_cpu.cpp.
//
// Reductions are bitwise reproducible whatever the thread count: pixels are cut into fixed
// blocks, each task sums its block in a fixed order, and the block partials are added in
// block order at the end. Sums along the innermost loop use `omp simd reduction`, which lets
// the compiler keep one partial sum per vector lane (a fixed order for a given binary).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "cpu_elements.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

using triplane3d_cpu::dispatch_elem;
using triplane3d_cpu::elements;
using triplane3d_cpu::load;
using triplane3d_cpu::store;

constexpr int64_t kBlock = 512;  // pixels per reduction block

struct Geometry {
    int64_t N, C, P;
    bool channels_last;  // memory [N,P,C] instead of [N,C,P]
    inline int64_t at(int64_t n, int64_t c, int64_t p) const {
        return channels_last ? (n * P + p) * C + c : (n * C + c) * P + p;
    }
};

Geometry geometry_of(const at::Tensor& x, const char* what) {
    TORCH_CHECK(x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
                "modulate_cpu: ", what, " must be a float32 or bfloat16 CPU tensor");
    TORCH_CHECK(x.dim() == 4, "modulate_cpu: ", what, " must be [N,C,H,W], got ", x.sizes());
    const bool cl = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
    TORCH_CHECK(cl || x.is_contiguous(), "modulate_cpu: ", what, " must be contiguous or channels-last");
    return {x.size(0), x.size(1), x.size(2) * x.size(3), cl};
}

// t has like's sizes and strides, and the dtype `dtype`.
void check_same(const at::Tensor& t, const at::Tensor& like, const char* what, at::ScalarType dtype) {
    TORCH_CHECK(t.scalar_type() == dtype && t.sizes() == like.sizes() && t.strides() == like.strides(),
                "modulate_cpu: ", what, " must be ", dtype == at::kFloat ? "float32" : "bfloat16",
                " with x's sizes and strides");
}

void check_nc(const at::Tensor& s, const Geometry& g, const char* what) {
    TORCH_CHECK(s.scalar_type() == at::kFloat && s.is_contiguous() && s.dim() == 2 && s.size(0) == g.N &&
                s.size(1) == g.C, "modulate_cpu: ", what, " must be a contiguous float32 [N,C] = [", g.N, ",", g.C,
                "], got ", s.sizes());
}

void check_bias(const at::Tensor& bias, const Geometry& g) {
    TORCH_CHECK(bias.is_contiguous() && bias.numel() == g.C && bias.scalar_type() == at::kFloat,
                "modulate_cpu: bias must be a contiguous float32 [C]");
}

// The activation as a compile-time kind (0 linear, 1 relu, 2 lrelu), so the inner loops
// vectorise without branches; no clamp is an infinite one.
struct ActParams {
    float alpha, gain, clamp;
};

template <int K>
inline float act_forward(float v, const ActParams& a) {
    v *= a.gain;
    // max/min rather than selects: the bfloat16 loops (whose stores are integer arithmetic)
    // stayed scalar and branchy with selects, 20x slower; the results are the same.
    if (K == 1) v = std::max(v, 0.f);
    if (K == 2) v = std::max(v, 0.f) + a.alpha * std::min(v, 0.f);
    return std::min(std::max(v, -a.clamp), a.clamp);
}

template <int K>
inline float act_slope(float y, const ActParams& a) {  // d y / d (pre-activation), from the output
    // Written as arithmetic on 0/1 masks rather than selects: GCC then vectorises the
    // backward loop, reductions included (with selects it stayed scalar: 3x slower).
    const float pos = static_cast<float>(y > 0.f);
    const float inside = static_cast<float>(y > -a.clamp) * static_cast<float>(y < a.clamp);
    float s = a.gain;
    if (K == 1) s = a.gain * pos;
    if (K == 2) s = a.gain * (a.alpha + (1.f - a.alpha) * pos);
    return s * inside;
}

template <typename F>
void dispatch_act(int64_t kind, F body) {
    TORCH_CHECK(kind >= 0 && kind <= 2, "modulate_cpu: act must be 0 (linear), 1 (relu) or 2 (lrelu)");
    if (kind == 0) body(std::integral_constant<int, 0>());
    else if (kind == 1) body(std::integral_constant<int, 1>());
    else body(std::integral_constant<int, 2>());
}

ActParams act_params(double alpha, double gain, double clamp) {
    TORCH_CHECK(gain > 0, "modulate_cpu: gain must be positive, got ", gain);
    const float c = clamp < 0 ? std::numeric_limits<float>::infinity() : static_cast<float>(clamp);
    return {static_cast<float>(alpha), static_cast<float>(gain), c};
}

// Runs body(n, p0, p1) over fixed pixel blocks of every sample, in parallel.
template <typename F>
void for_blocks(const Geometry& g, F body) {
    const int64_t blocks = (g.P + kBlock - 1) / kBlock;
    at::parallel_for(0, g.N * blocks, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            const int64_t n = t / blocks, blk = t % blocks;
            body(n, blk, blk * kBlock, std::min(g.P, (blk + 1) * kBlock));
        }
    });
}

// acc[c] += the sum of term(i, c) over the pixels [p0, p1) of sample n, i being the element's
// offset. Loops in the layout's order, so the innermost loop runs over contiguous memory
// (channels of a pixel, or pixels of a channel plane with an `omp simd` reduction).
template <typename Term>
inline void sum_per_channel(const Geometry& g, int64_t n, int64_t p0, int64_t p1, float* acc, Term term) {
    if (g.channels_last) {
        for (int64_t p = p0; p < p1; ++p) {
            const int64_t o = g.at(n, 0, p);
#pragma omp simd
            for (int64_t c = 0; c < g.C; ++c) acc[c] += term(o + c, c);
        }
    } else {
        for (int64_t c = 0; c < g.C; ++c) {
            const int64_t o = g.at(n, c, 0);
            float sum = 0.f;
#pragma omp simd reduction(+ : sum)
            for (int64_t p = p0; p < p1; ++p) sum += term(o + p, c);
            acc[c] += sum;
        }
    }
}

// partial[n][blk][c] -> out[n][c], summed in block order.
at::Tensor reduce_blocks(const std::vector<float>& partial, const Geometry& g, int64_t blocks) {
    auto out = at::zeros({g.N, g.C}, at::kFloat);
    float* o = out.data_ptr<float>();
    for (int64_t n = 0; n < g.N; ++n)
        for (int64_t b = 0; b < blocks; ++b)
            for (int64_t c = 0; c < g.C; ++c) o[n * g.C + c] += partial[(n * blocks + b) * g.C + c];
    return out;
}

}  // namespace

at::Tensor scale_channels(const at::Tensor& x, const at::Tensor& s) {
    const Geometry g = geometry_of(x, "x");
    check_nc(s, g, "s");
    auto y = at::empty_like(x);
    dispatch_elem(x, [&](auto tag) {
        using T = decltype(tag);
        const T* xp = elements<const T>(x);
        const float* sp = s.data_ptr<float>();
        T* yp = elements<T>(y);
        for_blocks(g, [&](int64_t n, int64_t, int64_t p0, int64_t p1) {
            const float* sn = sp + n * g.C;
            if (g.channels_last) {
                for (int64_t p = p0; p < p1; ++p) {
                    const int64_t o = g.at(n, 0, p);
#pragma omp simd
                    for (int64_t c = 0; c < g.C; ++c) store(yp, o + c, load(xp, o + c) * sn[c]);
                }
            } else {
                for (int64_t c = 0; c < g.C; ++c) {
                    const int64_t o = g.at(n, c, 0);
#pragma omp simd
                    for (int64_t p = p0; p < p1; ++p) store(yp, o + p, load(xp, o + p) * sn[c]);
                }
            }
        });
    });
    return y;
}

at::Tensor channel_dot(const at::Tensor& a, const at::Tensor& b) {
    const Geometry g = geometry_of(a, "a");
    check_same(b, a, "b", a.scalar_type());
    const int64_t blocks = (g.P + kBlock - 1) / kBlock;
    std::vector<float> partial(static_cast<size_t>(g.N * blocks * g.C), 0.f);
    dispatch_elem(a, [&](auto tag) {
        using T = decltype(tag);
        const T* ap = elements<const T>(a);
        const T* bp = elements<const T>(b);
        for_blocks(g, [&](int64_t n, int64_t blk, int64_t p0, int64_t p1) {
            sum_per_channel(g, n, p0, p1, partial.data() + (n * blocks + blk) * g.C,
                            [&](int64_t i, int64_t) { return load(ap, i) * load(bp, i); });
        });
    });
    return reduce_blocks(partial, g, blocks);
}

// noise: [N,P] contiguous or empty; bias: [C] or empty.
at::Tensor epilogue_forward(const at::Tensor& x, const at::Tensor& d, const at::Tensor& noise,
                               const at::Tensor& bias, int64_t act, double alpha, double gain, double clamp) {
    const Geometry g = geometry_of(x, "x");
    check_nc(d, g, "d");
    const bool has_noise = noise.numel() > 0, has_bias = bias.numel() > 0;
    TORCH_CHECK(!has_noise || (noise.is_contiguous() && noise.numel() == g.N * g.P && noise.scalar_type() == at::kFloat),
                "modulate_cpu: noise must be a contiguous float32 [N,H,W]");
    TORCH_CHECK(!has_bias || (bias.is_contiguous() && bias.numel() == g.C && bias.scalar_type() == at::kFloat),
                "modulate_cpu: bias must be a contiguous float32 [C]");
    const ActParams a = act_params(alpha, gain, clamp);
    auto y = at::empty_like(x);
    const std::vector<float> zeros(static_cast<size_t>(std::max(g.C, g.P)), 0.f);  // stands for absent bias / noise
    const float* dp = d.data_ptr<float>();
    const float* bp = has_bias ? bias.data_ptr<float>() : zeros.data();
    dispatch_elem(x, [&](auto tag) {
        using T = decltype(tag);
        const T* xp = elements<const T>(x);
        T* yp = elements<T>(y);
        dispatch_act(act, [&](auto kind) {
            constexpr int K = decltype(kind)::value;
            for_blocks(g, [&](int64_t n, int64_t, int64_t p0, int64_t p1) {
                const float* dn = dp + n * g.C;
                const float* nn = has_noise ? noise.data_ptr<float>() + n * g.P : zeros.data();
                if (g.channels_last) {
                    for (int64_t p = p0; p < p1; ++p) {
                        const T* xr = xp + g.at(n, 0, p);
                        T* yr = yp + g.at(n, 0, p);
                        const float z = nn[p];
#pragma omp simd
                        for (int64_t c = 0; c < g.C; ++c) store(yr, c, act_forward<K>(load(xr, c) * dn[c] + z + bp[c], a));
                    }
                } else {
                    for (int64_t c = 0; c < g.C; ++c) {
                        const T* xr = xp + g.at(n, c, 0);
                        T* yr = yp + g.at(n, c, 0);
                        const float dc = dn[c], bc = bp[c];
#pragma omp simd
                        for (int64_t p = p0; p < p1; ++p) store(yr, p, act_forward<K>(load(xr, p) * dc + nn[p] + bc, a));
                    }
                }
            });
        });
    });
    return y;
}

// Returns (dx, dd [N,C], dbias [C], dnoise [N,P]).
std::vector<at::Tensor> epilogue_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y,
                                             const at::Tensor& d, int64_t act, double alpha, double gain,
                                             double clamp) {
    const Geometry g = geometry_of(x, "x");
    check_same(y, x, "y", x.scalar_type());
    check_same(grad, x, "grad", x.scalar_type());
    check_nc(d, g, "d");
    const ActParams a = act_params(alpha, gain, clamp);
    const int64_t blocks = (g.P + kBlock - 1) / kBlock;
    auto dx = at::empty_like(x);
    auto dnoise = at::empty({g.N, g.P}, x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous));
    std::vector<float> part_d(static_cast<size_t>(g.N * blocks * g.C), 0.f);
    std::vector<float> part_b(static_cast<size_t>(g.N * blocks * g.C), 0.f);
    const float* dp = d.data_ptr<float>();
    float* dnp = dnoise.data_ptr<float>();
    dispatch_elem(x, [&](auto tag) {
        using T = decltype(tag);
        const T* gp = elements<const T>(grad);
        const T* xp = elements<const T>(x);
        const T* yp = elements<const T>(y);
        T* dxp = elements<T>(dx);
        dispatch_act(act, [&](auto kind) {
            constexpr int K = decltype(kind)::value;
            for_blocks(g, [&](int64_t n, int64_t blk, int64_t p0, int64_t p1) {
                const float* dn = dp + n * g.C;
                float* acc_d = part_d.data() + (n * blocks + blk) * g.C;
                float* acc_b = part_b.data() + (n * blocks + blk) * g.C;
                float* noise_n = dnp + n * g.P;
                if (g.channels_last) {
                    for (int64_t p = p0; p < p1; ++p) {
                        const int64_t o = g.at(n, 0, p);
                        const T *gr = gp + o, *xr = xp + o, *yr = yp + o;
                        T* dxr = dxp + o;
                        float sum_c = 0.f;
#pragma omp simd reduction(+ : sum_c)
                        for (int64_t c = 0; c < g.C; ++c) {
                            const float gz = load(gr, c) * act_slope<K>(load(yr, c), a);
                            store(dxr, c, gz * dn[c]);
                            acc_d[c] += gz * load(xr, c);
                            acc_b[c] += gz;
                            sum_c += gz;
                        }
                        noise_n[p] = sum_c;
                    }
                } else {
                    std::fill(noise_n + p0, noise_n + p1, 0.f);
                    for (int64_t c = 0; c < g.C; ++c) {
                        const int64_t o = g.at(n, c, 0);
                        const T *gr = gp + o, *xr = xp + o, *yr = yp + o;
                        T* dxr = dxp + o;
                        const float dc = dn[c];
                        float sd = 0.f, sb = 0.f;
#pragma omp simd reduction(+ : sd, sb)
                        for (int64_t p = p0; p < p1; ++p) {
                            const float gz = load(gr, p) * act_slope<K>(load(yr, p), a);
                            store(dxr, p, gz * dc);
                            sd += gz * load(xr, p);
                            sb += gz;
                            noise_n[p] += gz;
                        }
                        acc_d[c] = sd;
                        acc_b[c] = sb;
                    }
                }
            });
        });
    });
    auto dd = reduce_blocks(part_d, g, blocks);
    auto db = reduce_blocks(part_b, g, blocks).sum(0);
    return {dx, dd, db, dnoise};
}

// skip: x's sizes and strides, or empty (no sum); bias: [C]; clamp < 0: none. x float32 or
// bfloat16 (then with a skip); y float32.
at::Tensor skip_epilogue_forward(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& skip, double clamp) {
    const Geometry g = geometry_of(x, "x");
    const bool has_skip = skip.numel() > 0;
    if (has_skip) check_same(skip, x, "skip", at::kFloat);
    TORCH_CHECK(has_skip || x.scalar_type() == at::kFloat, "modulate_cpu: bfloat16 x needs a float32 skip");
    check_bias(bias, g);
    const ActParams a = act_params(0.0, 1.0, clamp);
    auto y = at::empty_like(x, x.options().dtype(at::kFloat));
    const std::vector<float> zeros(static_cast<size_t>(std::max(g.C, g.P)), 0.f);  // stands for an absent skip
    const float* bp = bias.data_ptr<float>();
    const float* sp = has_skip ? skip.data_ptr<float>() : nullptr;
    float* yp = y.data_ptr<float>();
    dispatch_elem(x, [&](auto tag) {
        using T = decltype(tag);
        const T* xp = elements<const T>(x);
        for_blocks(g, [&](int64_t n, int64_t, int64_t p0, int64_t p1) {
            if (g.channels_last) {
                for (int64_t p = p0; p < p1; ++p) {
                    const int64_t o = g.at(n, 0, p);
                    const float* sr = has_skip ? sp + o : zeros.data();
#pragma omp simd
                    for (int64_t c = 0; c < g.C; ++c) yp[o + c] = act_forward<0>(load(xp, o + c) + bp[c], a) + sr[c];
                }
            } else {
                for (int64_t c = 0; c < g.C; ++c) {
                    const int64_t o = g.at(n, c, 0);
                    const float* sr = has_skip ? sp + o : zeros.data();
                    const float bc = bp[c];
#pragma omp simd
                    for (int64_t p = p0; p < p1; ++p) yp[o + p] = act_forward<0>(load(xp, o + p) + bc, a) + sr[p];
                }
            }
        });
    });
    return y;
}

// Returns (dx in x's dtype, dbias [C]); grad (float32) and x share sizes and strides.
std::vector<at::Tensor> skip_epilogue_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& bias,
                                                  double clamp) {
    const Geometry g = geometry_of(x, "x");
    check_same(grad, x, "grad", at::kFloat);
    check_bias(bias, g);
    const ActParams a = act_params(0.0, 1.0, clamp);
    const int64_t blocks = (g.P + kBlock - 1) / kBlock;
    auto dx = at::empty_like(x);
    std::vector<float> part_b(static_cast<size_t>(g.N * blocks * g.C), 0.f);
    const float* gp = grad.data_ptr<float>();
    const float* bp = bias.data_ptr<float>();
    dispatch_elem(x, [&](auto tag) {
        using T = decltype(tag);
        const T* xp = elements<const T>(x);
        T* dxp = elements<T>(dx);
        for_blocks(g, [&](int64_t n, int64_t blk, int64_t p0, int64_t p1) {
            // Linear with gain 1: the clamp's output is inside (-clamp, clamp) exactly when its
            // input is, so the slope can be read from x + b.
            sum_per_channel(g, n, p0, p1, part_b.data() + (n * blocks + blk) * g.C, [&](int64_t i, int64_t c) {
                const float gz = gp[i] * act_slope<0>(load(xp, i) + bp[c], a);
                store(dxp, i, gz);
                return gz;
            });
        });
    });
    return {dx, reduce_blocks(part_b, g, blocks).sum(0)};
}

TORCH_LIBRARY_FRAGMENT(triplane3d_cpu, m) {
    m.def("scale_channels", &scale_channels);  // y = x * s[n,c] (CPU)
    m.def("channel_dot", &channel_dot);  // sum over pixels of a * b per sample and channel (CPU)
    m.def("epilogue_forward", &epilogue_forward);  // act((x * d + noise + bias) * gain), clamped (CPU)
    m.def("epilogue_backward", &epilogue_backward);  // gradients of epilogue_forward (CPU)
    m.def("skip_epilogue_forward", &skip_epilogue_forward);  // clamp(x + bias) + skip (CPU)
    m.def("skip_epilogue_backward", &skip_epilogue_backward);  // dx and dbias of skip_epilogue_forward (CPU)
}
