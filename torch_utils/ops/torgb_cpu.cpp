// CPU kernels of torgb.py: ToRGB of StyleGAN2's skip architecture in one pass,
//
//   y = clamp(conv1x1(x * s[n,c], W) + b[k]) + up(skip),
//
// the layer that writes a tri-plane generator's largest tensor (eg3d-small: 4 x 256 x 256 x 96
// floats, 100 MB). Unfused it is five passes over that size (the skip's 2x upsampling, the
// style scaling, the 1x1 convolution, the bias/clamp/skip epilogue, and the copies between);
// here each output row is made once: the upsampled skip row is blended from two skip rows into
// a scratch row (L2), the modulated 1x1 convolution is a register-blocked matrix product with
// the per-sample weight Wn[c][k] = W[k,c] * s[n,c], and bias, clamp and skip are applied to its
// registers before the one store.
//
//   torgb_forward        y and the number of clamped elements (the backward needs no mask
//                        when it is 0, which it nearly always is: clamp is a safety bound)
//   torgb_backward       from g = dL/dy, in one pass over g: x's gradient (g @ Wn^T), Wn's
//                        (x^T @ g per sample), the bias' (sum of g) and the skip's (the
//                        adjoint of the 2x upsampling); x's channels a multiple of 16
//   torgb_skip_backward  the skip's and the bias' gradients alone (for other channel counts,
//                        where torgb.py computes the rest with batched matmuls)
//
// The 2x upsampling is upfirdn2d.upsample2d with a separable 4-tap filter, given as the taps
// (e0, e1, o0, o1): an even output 2i is e0 * s[i-1] + e1 * s[i], an odd one 2i+1 is
// o0 * s[i] + o1 * s[i+1], along each axis (torgb.py derives them from the filter).
//
// All tensors are float32; x, skip, y and g are channels-last ([N,H,W,C] in memory), the
// layout of the networks' activations on a CPU. Rows of y are independent tasks, and the
// sums over pixels (the bias' and Wn's gradients) add per-row or per-group partials in a fixed
// order, so results are bitwise the same for any thread count.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
// Vectorise the 16-channel loops with 512-bit registers where the CPU has them (GCC's tuning
// for recent Xeons prefers 256-bit ones).
#pragma GCC target("prefer-vector-width=512")
#endif

namespace {

constexpr int64_t kLanes = 16;      // output channels per vector
constexpr int64_t kMaxVectors = 6;  // output channels per register block: 6 x 16 = 96
constexpr int64_t kRows = 4;        // pixels per register block (4 x 6 accumulators)

// 16 floats: one AVX-512 register, or (GCC vector extensions) several narrower ones on CPUs
// without it, so one source serves both builds.
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
inline vf vload(const float* p) { vf v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

// acc[i][v] += sum over l < L of A[i * ai + l * al] * B[l * lb + 16 v ...] for i < MR, v < NV:
// an MR x 16 NV block of a matrix product, kept in registers (MR and NV are compile-time, and
// MR x NV <= 24 leaves room for the NV loaded vectors of B).
template <int64_t MR, int64_t NV>
inline void block_product(vf (&acc)[MR][NV], const float* __restrict A, int64_t ai, int64_t al,
                          const float* __restrict B, int64_t lb, int64_t L) {
    for (int64_t l = 0; l < L; ++l) {
        vf b[NV];
#pragma GCC unroll 6
        for (int64_t v = 0; v < NV; ++v) b[v] = vload(B + l * lb + v * kLanes);
#pragma GCC unroll 12
        for (int64_t i = 0; i < MR; ++i) {
            const float a = A[i * ai + l * al];
#pragma GCC unroll 6
            for (int64_t v = 0; v < NV; ++v) acc[i][v] += a * b[v];
        }
    }
}

// A store that does not fetch the line it writes where the CPU can (AVX-512 here, 64-byte aligned).
inline void vstore_stream(float* p, vf v) {
#if defined(__AVX512F__)
    _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
#else
    vstore(p, v);
#endif
}

struct Taps {
    float e0, e1, o0, o1;
};

Taps taps_of(const at::Tensor& taps) {
    TORCH_CHECK(taps.device().is_cpu() && taps.scalar_type() == at::kFloat && taps.numel() == 4,
                "torgb_cpu: taps must be 4 float32 CPU values (e0, e1, o0, o1)");
    const auto t = taps.contiguous();
    const float* p = t.data_ptr<float>();
    return {p[0], p[1], p[2], p[3]};
}

// fn(std::integral_constant<int64_t, nv>{}) for nv in 1..kMaxVectors: the register blocks' widths.
template <typename Fn>
inline auto with_vectors(int64_t nv, Fn&& fn) {
    switch (nv) {
        case 1: return fn(std::integral_constant<int64_t, 1>{});
        case 2: return fn(std::integral_constant<int64_t, 2>{});
        case 3: return fn(std::integral_constant<int64_t, 3>{});
        case 4: return fn(std::integral_constant<int64_t, 4>{});
        case 5: return fn(std::integral_constant<int64_t, 5>{});
        default: return fn(std::integral_constant<int64_t, 6>{});
    }
}

void check_channels_last(const at::Tensor& t, const char* what) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "torgb_cpu: ", what,
                " must be a float32 CPU tensor");
    TORCH_CHECK(t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast), "torgb_cpu: ", what,
                " must be a 4-D channels-last tensor, got sizes ", t.sizes(), " strides ", t.strides());
}

// The modulation folded into a per-sample weight, W[k][c] * s[n][c] for weight [K, C] and styles
// [N, C]: laid out [N][C][K] (rows of output channels, the forward's) or, `transposed`,
// [N][K][C] (rows of input channels, dx's).
std::vector<float> per_sample_weight(const at::Tensor& weight, const at::Tensor& styles, bool transposed) {
    const int64_t N = styles.size(0), K = weight.size(0), C = weight.size(1);
    const auto wc = weight.contiguous(), sc = styles.contiguous();
    const float* wp = wc.data_ptr<float>();
    const float* sp = sc.data_ptr<float>();
    std::vector<float> wn(static_cast<size_t>(N * C * K));
    for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k)
            for (int64_t c = 0; c < C; ++c)
                wn[transposed ? (n * K + k) * C + c : (n * C + c) * K + k] = wp[k * C + c] * sp[n * C + c];
    return wn;
}

// Output row Y of the 2x upsampled skip image (K channels, 2 * Ws pixels) into `row`, with
// `v` (Ws + 2 pixels) as scratch for the vertical blend; rows outside the image are zeros.
void upsampled_row(const float* skip, int64_t Hs, int64_t Ws, int64_t K, int64_t Y, const Taps& t, float* v,
                   float* row) {
    const int64_t i = Y / 2;
    const bool odd = Y % 2;
    const int64_t ya = odd ? i : i - 1, yb = odd ? i + 1 : i;  // i itself is always inside
    const float wa = odd ? t.o0 : t.e0, wb = odd ? t.o1 : t.e1;
    std::fill(v, v + K, 0.f);                           // column -1
    std::fill(v + (Ws + 1) * K, v + (Ws + 2) * K, 0.f);  // column Ws
    float* __restrict vc = v + K;
    if (ya >= 0 && yb < Hs) {
        const float* __restrict sa = skip + ya * Ws * K;
        const float* __restrict sb = skip + yb * Ws * K;
#pragma omp simd
        for (int64_t e = 0; e < Ws * K; ++e) vc[e] = wa * sa[e] + wb * sb[e];
    } else {  // the other row lies in the zero padding (skipped, not multiplied: 0 * inf is NaN)
        const float* __restrict si = skip + i * Ws * K;
        const float wi = ya < 0 ? wb : wa;
#pragma omp simd
        for (int64_t e = 0; e < Ws * K; ++e) vc[e] = wi * si[e];
    }
    const float e0 = t.e0, e1 = t.e1, o0 = t.o0, o1 = t.o1;
    for (int64_t j = 0; j < Ws; ++j) {
        const float* __restrict vm = vc + (j - 1) * K;
        const float* __restrict v0 = vc + j * K;
        const float* __restrict vp = vc + (j + 1) * K;
        float* __restrict even = row + 2 * j * K;
        float* __restrict oddp = even + K;
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) {
            even[k] = e0 * vm[k] + e1 * v0[k];
            oddp[k] = o0 * v0[k] + o1 * vp[k];
        }
    }
}

// Columns [k0, k0 + 16 NV) of MR output pixels: acc = b + x[r] @ Wn, clamped (counting the
// elements clamped), plus the skip's values, stored to y. x rows are C floats apart, Wn rows and
// y and skip rows K. `stream`: y is written once and not read soon (the forward's output), so
// streaming stores may skip fetching its cache lines. MR is a compile-time constant (full
// blocks, then single-pixel tails), so that the accumulators stay in registers.
template <int64_t NV, int64_t MR>
int64_t pixel_block(const float* __restrict x, int64_t C, const float* __restrict wn,
                    const float* __restrict bias, const float* __restrict skip, float clamp, int64_t K,
                    float* __restrict y, bool stream) {
    vf acc[MR][NV];
#pragma GCC unroll 4
    for (int64_t r = 0; r < MR; ++r)
#pragma GCC unroll 6
        for (int64_t v = 0; v < NV; ++v) acc[r][v] = vload(bias + v * kLanes);
    block_product<MR, NV>(acc, x, C, 1, wn, K, C);
    stream = stream && reinterpret_cast<uintptr_t>(y) % 64 == 0 && K % kLanes == 0;
    vi clamped = {};
#pragma GCC unroll 4
    for (int64_t r = 0; r < MR; ++r)
#pragma GCC unroll 6
        for (int64_t v = 0; v < NV; ++v) {
            vf a = acc[r][v];
            if (clamp >= 0.f) {
                clamped -= (a > clamp) | (a < -clamp);  // comparisons give -1 where true
                a = a > clamp ? clamp : (a < -clamp ? -clamp : a);
            }
            if (skip) a += vload(skip + r * K + v * kLanes);
            if (stream) vstore_stream(y + r * K + v * kLanes, a);
            else vstore(y + r * K + v * kLanes, a);
        }
    int64_t count = 0;
    for (int j = 0; j < kLanes; ++j) count += clamped[j];
    return count;
}

// One row of W output pixels, all K channels (in register blocks of up to 96).
int64_t output_row(const float* x, int64_t W, int64_t C, const float* wn, const float* bias, const float* skip,
                   float clamp, int64_t K, float* y, bool stream) {
    int64_t clamped = 0;
    for (int64_t k0 = 0; k0 < K; k0 += kMaxVectors * kLanes) {
        clamped += with_vectors(std::min(kMaxVectors, (K - k0) / kLanes), [&](auto nv) {
            constexpr int64_t NV = decltype(nv)::value;
            int64_t count = 0, x0 = 0;
            for (; x0 + kRows <= W; x0 += kRows)
                count += pixel_block<NV, kRows>(x + x0 * C, C, wn + k0, bias + k0, skip ? skip + x0 * K + k0 : nullptr,
                                                clamp, K, y + x0 * K + k0, stream);
            for (; x0 < W; ++x0)
                count += pixel_block<NV, 1>(x + x0 * C, C, wn + k0, bias + k0, skip ? skip + x0 * K + k0 : nullptr,
                                            clamp, K, y + x0 * K + k0, stream);
            return count;
        });
    }
    return clamped;
}

// Skip row i's gradient (Ws pixels, K channels) from the output gradient gn ([H][W][K] of one
// image; H = 2 Hs, W = 2 Ws): the adjoint of upsampled_row. Skip row i feeds output rows 2i-1
// (o1), 2i (e1), 2i+1 (o0) and 2i+2 (e0); columns likewise. `col` holds W + 2 pixels.
void skip_grad_row(const float* gn, int64_t H, int64_t W, int64_t K, int64_t i, const Taps& t, float* col,
                   float* out) {
    const int64_t rows[4] = {2 * i - 1, 2 * i, 2 * i + 1, 2 * i + 2};
    const float wts[4] = {t.o1, t.e1, t.o0, t.e0};
    float* __restrict cc = col + K;  // col[0] and col[W+1] are the zero columns -1 and W
    std::fill(col, col + K, 0.f);
    std::fill(cc, cc + (W + 1) * K, 0.f);
    for (int q = 0; q < 4; ++q) {
        if (rows[q] < 0 || rows[q] >= H) continue;
        const float w = wts[q];
        const float* __restrict src = gn + rows[q] * W * K;
#pragma omp simd
        for (int64_t e = 0; e < W * K; ++e) cc[e] += w * src[e];
    }
    const float e0 = t.e0, e1 = t.e1, o0 = t.o0, o1 = t.o1;
    for (int64_t j = 0; j < W / 2; ++j) {
        const float* __restrict cm = cc + (2 * j - 1) * K;
        const float* __restrict c0 = cc + 2 * j * K;
        const float* __restrict c1 = cc + (2 * j + 1) * K;
        const float* __restrict c2 = cc + (2 * j + 2) * K;
        float* __restrict o = out + j * K;
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) o[k] = o1 * cm[k] + e1 * c0[k] + o0 * c1[k] + e0 * c2[k];
    }
}

// dx[r][c0 : c0 + 16 NV] = sum_k g[r][k] * WnT[k][c0 ...] for MR pixels (g rows K floats apart,
// dx rows C).
template <int64_t NV, int64_t MR>
void dx_block(const float* __restrict g, int64_t K, const float* __restrict wnt, int64_t C, float* __restrict dx) {
    vf acc[MR][NV] = {};
    block_product<MR, NV>(acc, g, K, 1, wnt, C, K);
#pragma GCC unroll 12
    for (int64_t r = 0; r < MR; ++r)
#pragma GCC unroll 6
        for (int64_t v = 0; v < NV; ++v) vstore(dx + r * C + v * kLanes, acc[r][v]);
}

// Columns [c0, c0 + 16 NV) of dx for a row of P pixels, in blocks of about 24 accumulators (few
// x channels: more pixels per block, so that each loaded weight vector feeds enough FMAs).
template <int64_t NV>
void dx_row(const float* g, int64_t P, int64_t K, const float* wnt, int64_t C, float* dx) {
    constexpr int64_t MR = std::min<int64_t>(12, 24 / NV);
    int64_t p0 = 0;
    for (; p0 + MR <= P; p0 += MR) dx_block<NV, MR>(g + p0 * K, K, wnt, C, dx + p0 * C);
    for (; p0 < P; ++p0) dx_block<NV, 1>(g + p0 * K, K, wnt, C, dx + p0 * C);
}

// db[k0 : k0 + 16 NV] += sum over P pixels of g[p][k0 ...], summed in registers.
template <int64_t NV>
void bias_grad_row(const float* __restrict g, int64_t P, int64_t K, float* __restrict db) {
    vf acc[NV] = {};
    for (int64_t p = 0; p < P; ++p)
#pragma GCC unroll 6
        for (int64_t v = 0; v < NV; ++v) acc[v] += vload(g + p * K + v * kLanes);
#pragma GCC unroll 6
    for (int64_t v = 0; v < NV; ++v) vstore(db + v * kLanes, vload(db + v * kLanes) + acc[v]);
}

// part[c0 + r][k0 : k0 + 16 NV] += sum_p x[p][c0 + r] * g[p][k0 ...] for r < 4, over P pixels
// (x rows C floats apart, g rows and part rows K).
template <int64_t NV>
void dwn_block(const float* __restrict x, int64_t C, const float* __restrict g, int64_t K, int64_t P,
               float* __restrict part) {
    constexpr int64_t kC = 4;
    vf acc[kC][NV] = {};
    block_product<kC, NV>(acc, x, 1, C, g, K, P);
#pragma GCC unroll 4
    for (int64_t r = 0; r < kC; ++r)
#pragma GCC unroll 6
        for (int64_t v = 0; v < NV; ++v) vstore(part + r * K + v * kLanes, vload(part + r * K + v * kLanes) + acc[r][v]);
}

}  // namespace

// x [N,C,H,W], weight [K,C], styles [N,C], bias [K]; skip empty, [N,K,H,W] or (with taps)
// [N,K,H/2,W/2]; clamp < 0 for none. Returns (y [N,K,H,W] channels-last, elements clamped).
std::tuple<at::Tensor, int64_t> torgb_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& styles,
                                              const at::Tensor& bias, const at::Tensor& skip, const at::Tensor& taps,
                                              double clamp) {
    check_channels_last(x, "x");
    const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    TORCH_CHECK(weight.dim() == 2 && weight.size(1) == C && weight.scalar_type() == at::kFloat,
                "torgb_cpu: weight must be float32 [K, ", C, "], got ", weight.sizes());
    const int64_t K = weight.size(0);
    TORCH_CHECK(K > 0 && K % kLanes == 0, "torgb_cpu: output channels must be a multiple of ", kLanes, ", got ", K);
    TORCH_CHECK(styles.sizes() == at::IntArrayRef({N, C}) && styles.scalar_type() == at::kFloat,
                "torgb_cpu: styles must be float32 [", N, ", ", C, "], got ", styles.sizes());
    TORCH_CHECK(bias.numel() == K && bias.scalar_type() == at::kFloat, "torgb_cpu: bias must be float32 [", K, "]");
    const bool has_skip = skip.numel() > 0, up = taps.numel() > 0;
    if (has_skip) {
        check_channels_last(skip, "skip");
        const int64_t f = up ? 2 : 1;
        TORCH_CHECK(skip.size(0) == N && skip.size(1) == K && skip.size(2) * f == H && skip.size(3) * f == W,
                    "torgb_cpu: skip must be [", N, ", ", K, ", ", H / f, ", ", W / f, "], got ", skip.sizes());
    }
    const Taps t = up ? taps_of(taps) : Taps{0, 0, 0, 0};
    const std::vector<float> wn = per_sample_weight(weight, styles, false);
    const auto bc = bias.contiguous();
    auto y = at::empty({N, K, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
    const float* xp = x.data_ptr<float>();
    const float* bp = bc.data_ptr<float>();
    const float* sp = has_skip ? skip.data_ptr<float>() : nullptr;
    float* yp = y.data_ptr<float>();
    const float cl = static_cast<float>(clamp);
    const int64_t Hs = has_skip ? skip.size(2) : 0, Ws = has_skip ? skip.size(3) : 0;
    std::atomic<int64_t> clamped{0};
    at::parallel_for(0, N * H, 1, [&](int64_t r0, int64_t r1) {
        std::vector<float> v(up ? static_cast<size_t>((Ws + 2) * K) : 0), row(up ? static_cast<size_t>(W * K) : 0);
        int64_t count = 0;
        for (int64_t r = r0; r < r1; ++r) {
            const int64_t n = r / H, Y = r % H;
            const float* skip_row = nullptr;
            if (up) {
                upsampled_row(sp + n * Hs * Ws * K, Hs, Ws, K, Y, t, v.data(), row.data());
                skip_row = row.data();
            } else if (has_skip) {
                skip_row = sp + (n * H + Y) * W * K;
            }
            count += output_row(xp + (n * H + Y) * W * C, W, C, wn.data() + n * C * K, bp, skip_row, cl, K,
                                yp + (n * H + Y) * W * K, /*stream=*/true);
        }
        clamped += count;
#if defined(__AVX512F__)
        _mm_sfence();  // the streaming stores of pixel_block are visible before the op returns
#endif
    });
    return {y, clamped.load()};
}

// g [N,K,2Hs,2Ws] channels-last -> (the skip's gradient [N,K,Hs,Ws] channels-last, sum of g over
// N, H, W [K]), for x whose channels the fused torgb_backward does not take.
std::tuple<at::Tensor, at::Tensor> torgb_skip_backward(const at::Tensor& g, const at::Tensor& taps) {
    check_channels_last(g, "grad");
    const int64_t N = g.size(0), K = g.size(1), H = g.size(2), W = g.size(3);
    TORCH_CHECK(H % 2 == 0 && W % 2 == 0, "torgb_cpu: grad must have even height and width, got ", g.sizes());
    const int64_t Hs = H / 2, Ws = W / 2;
    const Taps t = taps_of(taps);
    auto ds = at::empty({N, K, Hs, Ws}, g.options().memory_format(at::MemoryFormat::ChannelsLast));
    std::vector<float> partial(static_cast<size_t>(N * Hs * K));
    const float* gp = g.data_ptr<float>();
    float* dp = ds.data_ptr<float>();
    at::parallel_for(0, N * Hs, 1, [&](int64_t r0, int64_t r1) {
        std::vector<float> col(static_cast<size_t>((W + 2) * K));
        for (int64_t r = r0; r < r1; ++r) {
            const int64_t n = r / Hs, i = r % Hs;
            const float* gn = gp + n * H * W * K;
            skip_grad_row(gn, H, W, K, i, t, col.data(), dp + (n * Hs + i) * Ws * K);
            // The bias' partial: output rows 2i and 2i+1 (each output row in exactly one partial).
            float* __restrict part = partial.data() + r * K;
            std::fill(part, part + K, 0.f);
            const float* __restrict src = gn + 2 * i * W * K;
            for (int64_t X = 0; X < 2 * W; ++X)
#pragma omp simd
                for (int64_t k = 0; k < K; ++k) part[k] += src[X * K + k];
        }
    });
    auto db = at::empty({K}, g.options());
    float* bp = db.data_ptr<float>();
    std::fill(bp, bp + K, 0.f);
    for (int64_t r = 0; r < N * Hs; ++r)
        for (int64_t k = 0; k < K; ++k) bp[k] += partial[r * K + k];
    return {ds, db};
}

// The whole backward of torgb_forward in one pass over g [N,K,H,W] (channels-last), for x
// [N,C,H,W] with C a multiple of 16: returns (dx [N,C,H,W] channels-last, dWn [N,C,K] (the
// gradient of the per-sample weight W[k,c] s[n,c]), db [K], the skip's gradient [N,K,H/2,W/2]
// channels-last when taps are given, else empty). mask_clamp >= 0: the forward clamped some
// elements; their gradient stops at the clamp, so the conv's output is recomputed to find them
// (the skip's gradient is g itself, unmasked).
// Rows are processed in fixed groups of kGroupRows of one image, each with its own partial sums
// of dWn and db, added in group order: bitwise the same for any thread count.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> torgb_backward(
        const at::Tensor& g, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& styles,
        const at::Tensor& bias, const at::Tensor& taps, double mask_clamp) {
    constexpr int64_t kGroupRows = 16;  // even: a group holds whole skip rows
    check_channels_last(g, "grad");
    check_channels_last(x, "x");
    const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = weight.size(0);
    TORCH_CHECK(g.size(0) == N && g.size(1) == K && g.size(2) == H && g.size(3) == W,
                "torgb_cpu: grad must be [", N, ", ", K, ", ", H, ", ", W, "], got ", g.sizes());
    TORCH_CHECK(C % kLanes == 0 && K % kLanes == 0, "torgb_cpu: torgb_backward needs channels in multiples of ",
                kLanes, ", got ", C, " -> ", K);
    TORCH_CHECK(weight.dim() == 2 && weight.size(1) == C && weight.scalar_type() == at::kFloat &&
                styles.sizes() == at::IntArrayRef({N, C}) && styles.scalar_type() == at::kFloat &&
                bias.numel() == K && bias.scalar_type() == at::kFloat,
                "torgb_cpu: weight [K, C], styles [N, C] and bias [K] must be float32 and match x and grad");
    const bool up = taps.numel() > 0;
    TORCH_CHECK(!up || (H % 2 == 0 && W % 2 == 0), "torgb_cpu: an upsampled skip needs even H and W, got ", H,
                "x", W);
    const Taps t = up ? taps_of(taps) : Taps{0, 0, 0, 0};
    const auto bc = bias.contiguous();
    // WnT (for dx), and Wn only where the conv must be recomputed for the clamp's mask.
    const std::vector<float> wnt = per_sample_weight(weight, styles, true);
    const std::vector<float> wn = mask_clamp >= 0 ? per_sample_weight(weight, styles, false) : std::vector<float>();
    const int64_t groups = (H + kGroupRows - 1) / kGroupRows;
    std::vector<float> dwn_part(static_cast<size_t>(N * groups * C * K), 0.f);
    std::vector<float> db_part(static_cast<size_t>(N * groups * K), 0.f);
    auto dx = at::empty({N, C, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
    auto dskip = up ? at::empty({N, K, H / 2, W / 2}, x.options().memory_format(at::MemoryFormat::ChannelsLast))
                    : at::empty({0}, x.options());
    const float* gp = g.data_ptr<float>();
    const float* xp = x.data_ptr<float>();
    const float* bp = bc.data_ptr<float>();
    float* dxp = dx.data_ptr<float>();
    float* dsp = up ? dskip.data_ptr<float>() : nullptr;
    const float cl = static_cast<float>(mask_clamp);
    at::parallel_for(0, N * groups, 1, [&](int64_t q0, int64_t q1) {
        std::vector<float> masked(mask_clamp >= 0 ? static_cast<size_t>(W * K) : 0);
        std::vector<float> col(up ? static_cast<size_t>((W + 2) * K) : 0);
        for (int64_t q = q0; q < q1; ++q) {
            const int64_t n = q / groups, y0 = (q % groups) * kGroupRows, y1 = std::min(H, y0 + kGroupRows);
            const float* gn = gp + n * H * W * K;
            float* dwn = dwn_part.data() + q * C * K;
            float* db = db_part.data() + q * K;
            for (int64_t Y = y0; Y < y1; ++Y) {
                const float* xr = xp + (n * H + Y) * W * C;
                const float* gr = gn + Y * W * K;
                if (cl >= 0.f) {  // zero the gradient where the forward's clamp cut
                    output_row(xr, W, C, wn.data() + n * C * K, bp, nullptr, -1.f, K, masked.data(), false);
                    for (int64_t e = 0; e < W * K; ++e)
                        masked[e] = std::abs(masked[e]) <= cl ? gr[e] : 0.f;
                    gr = masked.data();
                }
                for (int64_t k0 = 0; k0 < K; k0 += kMaxVectors * kLanes)
                    with_vectors(std::min(kMaxVectors, (K - k0) / kLanes), [&](auto nv) {
                        bias_grad_row<decltype(nv)::value>(gr + k0, W, K, db + k0);
                    });
                for (int64_t c0 = 0; c0 < C; c0 += kMaxVectors * kLanes)
                    with_vectors(std::min(kMaxVectors, (C - c0) / kLanes), [&](auto nv) {
                        dx_row<decltype(nv)::value>(gr, W, K, wnt.data() + n * K * C + c0, C,
                                                    dxp + (n * H + Y) * W * C + c0);
                    });
                for (int64_t k0 = 0; k0 < K; k0 += kMaxVectors * kLanes)
                    for (int64_t c0 = 0; c0 < C; c0 += 4)
                        with_vectors(std::min(kMaxVectors, (K - k0) / kLanes), [&](auto nv) {
                            dwn_block<decltype(nv)::value>(xr + c0, C, gr + k0, K, W, dwn + c0 * K + k0);
                        });
                if (up && Y % 2 == 1)  // skip row Y/2 is complete once output row Y + 1 is read
                    skip_grad_row(gn, H, W, K, Y / 2, t, col.data(), dsp + (n * (H / 2) + Y / 2) * (W / 2) * K);
            }
        }
    });
    auto dwn = at::zeros({N, C, K}, x.options());
    auto db = at::zeros({K}, x.options());
    float* dwp = dwn.data_ptr<float>();
    float* dbp = db.data_ptr<float>();
    for (int64_t q = 0; q < N * groups; ++q) {
        float* dst = dwp + (q / groups) * C * K;
        const float* src = dwn_part.data() + q * C * K;
        for (int64_t e = 0; e < C * K; ++e) dst[e] += src[e];
        for (int64_t k = 0; k < K; ++k) dbp[k] += db_part[q * K + k];
    }
    return {dx, dwn, db, dskip};
}

TORCH_LIBRARY_FRAGMENT(triplane3d_cpu, m) {
    m.def("torgb_forward", &torgb_forward);              // y = clamp(conv1x1(x * s, W) + b) + up(skip) (CPU)
    m.def("torgb_backward", &torgb_backward);            // every gradient of torgb_forward in one pass (CPU)
    m.def("torgb_skip_backward", &torgb_skip_backward);  // the skip's and the bias' gradients alone (CPU)
}
