// CPU kernel of winograd.py: a stride-1 3x3 convolution (float32, channels-last) by Winograd's
// minimal filtering F(4x4, 3x3) (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural
// Networks"). Each 4x4 block of outputs ("tile") is computed from the 6x6 input patch under it:
//
//   Y = A^T [ U ⊙ V ] A,   V = B^T d B (per input channel),   U = G g G^T (per weight pair),
//
// with the product over input channels summed inside the ⊙: for each of the 36 positions p of
// the 6x6 transform domain, M[p] = V[p] (tiles x C) @ U[p] (C x K) is a plain matrix product.
// That takes 36 multiply-adds per tile and channel pair where the direct convolution takes
// 16 * 9 = 144, so the FLOPs drop 4x; the transforms are additions over 16 channels at a time.
//
// Why a kernel: oneDNN's direct convolution already runs at this CPU's matmul speed, so only
// fewer FLOPs make the step faster, and unfused Winograd (transforms and a batched matmul as
// torch ops) loses what it saves to memory traffic: its transformed tensors are 2.25x the
// input. Here a block of tiles is transformed into a scratch buffer that stays in the L2
// cache, multiplied there, and transformed back straight into the output.
//
// Three operators:
// - winograd_weight: U, packed as [36][K / NR][C][NR] (NR = 32 or 16 columns) so that the matrix
//   product streams each panel contiguously; also for a transposed convolution's weight.
// - winograd_conv3x3: the convolution, given U. The input gradient of a stride-1 convolution is
//   again one (the filter flipped, the channel axes swapped: winograd_weight's `transposed`).
// - winograd_weight_grad: dw = G^T dU G with dU[p] = sum over tiles of V[p]^T dM[p] and
//   dM = A dY A^T, the transform of the output gradient: the same domain, transposed products.
//
// Threads (at::parallel_for): over blocks of tiles; each thread owns its scratch. Every output
// element is written once, by one thread, from the same sums whichever way the work is split,
// so the results are bitwise reproducible across thread counts (winograd_weight_grad: see
// kGradGroups).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
// GCC's tuning for recent Xeons vectorises with 256-bit registers by default; the transforms
// below work on 16 channels at a time, one 512-bit register (2x fewer instructions).
#pragma GCC target("prefer-vector-width=512")
#endif
#endif

namespace {

constexpr int64_t kTile = 4;    // outputs per tile side (m)
constexpr int64_t kPatch = 6;   // inputs per tile side (m + r - 1)
constexpr int64_t kPos = 36;    // positions of the transform domain
constexpr int64_t kLanes = 16;  // channels transformed together (one AVX-512 register)
constexpr int64_t kMR = 12;     // tile rows of the matrix micro-kernel

struct Geometry {
    int64_t N, H, W, C, K, Ho, Wo, pad_y, pad_x, tiles_y, tiles_x, T;
};

// One tile: its image and the top-left output pixel.
struct TileOrigin {
    int64_t n, oy, ox;
};

inline TileOrigin tile_origin(const Geometry& g, int64_t t) {
    const int64_t per_image = g.tiles_y * g.tiles_x;
    const int64_t r = t % per_image;
    return {t / per_image, (r / g.tiles_x) * kTile, (r % g.tiles_x) * kTile};
}

// B^T applied to 6 vectors of kLanes channels: src[i * ss], dst[j * ds].
inline void input_rows(const float* src, int64_t ss, float* dst, int64_t ds) {
    const float *d0 = src, *d1 = src + ss, *d2 = src + 2 * ss, *d3 = src + 3 * ss, *d4 = src + 4 * ss,
                *d5 = src + 5 * ss;
#pragma GCC ivdep
    for (int64_t v = 0; v < kLanes; ++v) {
        const float a = d1[v], b = d2[v], c = d3[v], e = d4[v];
        dst[v] = 4.f * d0[v] - 5.f * b + e;
        dst[ds + v] = -4.f * (a + b) + c + e;
        dst[2 * ds + v] = 4.f * (a - b) - c + e;
        dst[3 * ds + v] = 2.f * (c - a) - b + e;
        dst[4 * ds + v] = 2.f * (a - c) - b + e;
        dst[5 * ds + v] = 4.f * a - 5.f * c + d5[v];
    }
}

// A^T applied to 6 vectors of kLanes channels: src[i * ss], dst[j * ds] for 4 outputs.
inline void output_rows(const float* src, int64_t ss, float* dst, int64_t ds) {
    const float *m0 = src, *m1 = src + ss, *m2 = src + 2 * ss, *m3 = src + 3 * ss, *m4 = src + 4 * ss,
                *m5 = src + 5 * ss;
#pragma GCC ivdep
    for (int64_t v = 0; v < kLanes; ++v) {
        const float s12 = m1[v] + m2[v], d12 = m1[v] - m2[v], s34 = m3[v] + m4[v], d34 = m3[v] - m4[v];
        dst[v] = m0[v] + s12 + s34;
        dst[ds + v] = d12 + 2.f * d34;
        dst[2 * ds + v] = s12 + 4.f * s34;
        dst[3 * ds + v] = d12 + 8.f * d34 + m5[v];
    }
}

// V[p][row][c] (the block's rows of C channels) for one tile. Patch pixels outside the image
// are the convolution's zero padding.
void transform_input(const float* x, const Geometry& g, const TileOrigin& o, float* V, int64_t row,
                     int64_t rows) {
    float patch[kPatch][kPatch][kLanes];
    float half[kPatch][kPatch][kLanes];
    const int64_t y0 = o.oy - g.pad_y, x0 = o.ox - g.pad_x;
    // A patch inside the image is read in place (pixels C floats apart); one that overlaps the
    // padding is first copied with its zeros.
    const bool inside = y0 >= 0 && x0 >= 0 && y0 + kPatch <= g.H && x0 + kPatch <= g.W;
    for (int64_t c0 = 0; c0 < g.C; c0 += kLanes) {
        if (!inside)
            for (int64_t i = 0; i < kPatch; ++i)
                for (int64_t j = 0; j < kPatch; ++j) {
                    const int64_t iy = y0 + i, ix = x0 + j;
                    if (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W)
                        std::copy_n(x + ((o.n * g.H + iy) * g.W + ix) * g.C + c0, kLanes, patch[i][j]);
                    else
                        std::fill_n(patch[i][j], kLanes, 0.f);
                }
        for (int64_t i = 0; i < kPatch; ++i) {  // along x, within each patch row
            if (inside)
                input_rows(x + ((o.n * g.H + y0 + i) * g.W + x0) * g.C + c0, g.C, half[i][0], kLanes);
            else
                input_rows(patch[i][0], kLanes, half[i][0], kLanes);
        }
        for (int64_t j = 0; j < kPatch; ++j)  // along y: position (a, j) -> V[a * 6 + j]
            input_rows(half[0][j], kPatch * kLanes, V + (j * rows + row) * g.C + c0, kPatch * rows * g.C);
    }
}

// The tile's outputs from M[p][row][k] (+ bias), cropped at the image's edge.
void transform_output(const float* M, const Geometry& g, const TileOrigin& o, int64_t row, int64_t rows,
                      const float* bias, float* y) {
    float half[kTile][kPatch][kLanes];
    float out[kTile][kTile][kLanes];
    const int64_t ny = std::min(kTile, g.Ho - o.oy), nx = std::min(kTile, g.Wo - o.ox);
    // A whole tile without bias is written in place (pixels K floats apart).
    const bool direct = ny == kTile && nx == kTile && bias == nullptr;
    for (int64_t k0 = 0; k0 < g.K; k0 += kLanes) {
        for (int64_t j = 0; j < kPatch; ++j)  // along y: M[i * 6 + j], i = 0..5 -> half[a][j]
            output_rows(M + (j * rows + row) * g.K + k0, kPatch * rows * g.K, half[0][j], kPatch * kLanes);
        for (int64_t a = 0; a < kTile; ++a) {  // along x
            float* dst_row = y + ((o.n * g.Ho + o.oy + a) * g.Wo + o.ox) * g.K + k0;
            if (direct)
                output_rows(half[a][0], kLanes, dst_row, g.K);
            else
                output_rows(half[a][0], kLanes, out[a][0], kLanes);
        }
        if (direct) continue;
        for (int64_t a = 0; a < ny; ++a)
            for (int64_t b = 0; b < nx; ++b) {
                float* dst = y + ((o.n * g.Ho + o.oy + a) * g.Wo + o.ox + b) * g.K + k0;
                if (bias != nullptr) {
                    for (int64_t v = 0; v < kLanes; ++v) dst[v] = out[a][b][v] + bias[k0 + v];
                } else {
                    std::copy_n(out[a][b], kLanes, dst);
                }
            }
    }
}

// A applied to 4 vectors of kLanes channels (the adjoint of output_rows): src[i * ss] -> dst[j * ds], 6 outputs.
inline void grad_output_rows(const float* src, int64_t ss, float* dst, int64_t ds) {
    const float *g0 = src, *g1 = src + ss, *g2 = src + 2 * ss, *g3 = src + 3 * ss;
#pragma GCC ivdep
    for (int64_t v = 0; v < kLanes; ++v) {
        const float s02 = g0[v] + g2[v], s13 = g1[v] + g3[v];
        const float q02 = g0[v] + 4.f * g2[v], q13 = 2.f * g1[v] + 8.f * g3[v];
        dst[v] = g0[v];
        dst[ds + v] = s02 + s13;
        dst[2 * ds + v] = s02 - s13;
        dst[3 * ds + v] = q02 + q13;
        dst[4 * ds + v] = q02 - q13;
        dst[5 * ds + v] = g3[v];
    }
}

// dM[p][row][k] = (A dY A^T)[p] for one tile: the gradient of M given the tile's output gradient
// dY (zero beyond the image's edge, where the tile has no outputs).
void transform_grad_output(const float* dy, const Geometry& g, const TileOrigin& o, float* dM, int64_t row,
                           int64_t rows) {
    float tile[kTile][kTile][kLanes];
    float half[kTile][kPatch][kLanes];
    const int64_t ny = std::min(kTile, g.Ho - o.oy), nx = std::min(kTile, g.Wo - o.ox);
    const bool whole = ny == kTile && nx == kTile;  // read in place, as in transform_input
    for (int64_t k0 = 0; k0 < g.K; k0 += kLanes) {
        if (!whole)
            for (int64_t a = 0; a < kTile; ++a)
                for (int64_t b = 0; b < kTile; ++b) {
                    if (a < ny && b < nx)
                        std::copy_n(dy + ((o.n * g.Ho + o.oy + a) * g.Wo + o.ox + b) * g.K + k0, kLanes, tile[a][b]);
                    else
                        std::fill_n(tile[a][b], kLanes, 0.f);
                }
        for (int64_t a = 0; a < kTile; ++a) {  // along x
            if (whole)
                grad_output_rows(dy + ((o.n * g.Ho + o.oy + a) * g.Wo + o.ox) * g.K + k0, g.K, half[a][0], kLanes);
            else
                grad_output_rows(tile[a][0], kLanes, half[a][0], kLanes);
        }
        for (int64_t j = 0; j < kPatch; ++j)  // along y: position (i, j) -> dM[i * 6 + j]
            grad_output_rows(half[0][j], kPatch * kLanes, dM + (j * rows + row) * g.K + k0, kPatch * rows * g.K);
    }
}

// out[i][j] (+)= sum over l < L of A[i * ai + l * al] * B[l * lb + j], for i < MR, j < NR:
// an MR x NR block of a matrix product, accumulated in registers.
template <int64_t MR, int64_t NR, bool ACCUMULATE>
inline void micro_kernel(const float* A, int64_t ai, int64_t al, const float* B, int64_t lb, int64_t L,
                         float* out, int64_t lo) {
#if defined(__AVX512F__)
    constexpr int64_t kCols = NR / 16;
    __m512 acc[MR][kCols];
#pragma GCC unroll 16
    for (int64_t i = 0; i < MR; ++i)
#pragma GCC unroll 2
        for (int64_t j = 0; j < kCols; ++j)
            acc[i][j] = ACCUMULATE ? _mm512_loadu_ps(out + i * lo + 16 * j) : _mm512_setzero_ps();
    for (int64_t l = 0; l < L; ++l) {
        __m512 b[kCols];
#pragma GCC unroll 2
        for (int64_t j = 0; j < kCols; ++j) b[j] = _mm512_loadu_ps(B + l * lb + 16 * j);
#pragma GCC unroll 16
        for (int64_t i = 0; i < MR; ++i) {
            const __m512 a = _mm512_set1_ps(A[i * ai + l * al]);
#pragma GCC unroll 2
            for (int64_t j = 0; j < kCols; ++j) acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
        }
    }
#pragma GCC unroll 16
    for (int64_t i = 0; i < MR; ++i)
#pragma GCC unroll 2
        for (int64_t j = 0; j < kCols; ++j) _mm512_storeu_ps(out + i * lo + 16 * j, acc[i][j]);
#else
    float acc[MR][NR];
    for (int64_t i = 0; i < MR; ++i)
        for (int64_t j = 0; j < NR; ++j) acc[i][j] = ACCUMULATE ? out[i * lo + j] : 0.f;
    for (int64_t l = 0; l < L; ++l)
        for (int64_t i = 0; i < MR; ++i) {
            const float a = A[i * ai + l * al];
            for (int64_t j = 0; j < NR; ++j) acc[i][j] += a * B[l * lb + j];
        }
    for (int64_t i = 0; i < MR; ++i) std::copy_n(acc[i], NR, out + i * lo);
#endif
}

// M[rows][K] = V[rows][C] @ U, U packed as [K / NR][C][NR]; rows is a multiple of kMR.
template <int64_t NR>
void block_matmul(const float* V, const float* U, float* M, int64_t rows, int64_t C, int64_t K) {
    for (int64_t jp = 0; jp < K / NR; ++jp)
        for (int64_t i0 = 0; i0 < rows; i0 += kMR)
            micro_kernel<kMR, NR, false>(V + i0 * C, C, 1, U + jp * C * NR, NR, C, M + i0 * K + jp * NR, K);
}

// dU[C][K] += V[rows][C]^T @ dM[rows][K] (the weight gradient's product); C is a multiple of 8.
template <int64_t NR>
void block_matmul_tn(const float* V, const float* dM, float* dU, int64_t rows, int64_t C, int64_t K) {
    constexpr int64_t kRowsC = 8;
    for (int64_t k0 = 0; k0 < K; k0 += NR)
        for (int64_t c0 = 0; c0 < C; c0 += kRowsC)
            micro_kernel<kRowsC, NR, true>(V + c0, 1, C, dM + k0, K, rows, dU + c0 * K + k0, K);
}

// Tiles per block: the block's V and M (36 x rows x (C + K) floats) stay within about 1 MiB,
// half of a core's L2 on current server CPUs, and rows are a multiple of the micro-kernel's.
// Where U (36 x C x K floats) is larger than that itself (above 128 x 128 channels), every block
// streams all of U (or, for the weight gradient, all of dU) from further out, so blocks get at
// least kBigRows tiles to share that traffic, although V and M then spill from L2. At 512
// channels and batch 2 that made the forward at 32x32 1.8x faster (43.7 to 24.9 ms) and the
// weight gradient at 64x64 1.8x (314 to 170 ms).
constexpr int64_t kBigRows = 96;

int64_t block_rows(int64_t C, int64_t K, int64_t T) {
    const int64_t budget = (int64_t{1} << 20) / (kPos * (C + K) * int64_t{sizeof(float)});
    int64_t rows = std::max(kMR, budget / kMR * kMR);
    if (C * K > 128 * 128) rows = std::max(rows, kBigRows);
    return std::min(rows, (T + kMR - 1) / kMR * kMR);
}

// F(4x4, 3x3) filter transform: U = G g G^T, for a 3x3 filter g.
constexpr double kG[kPatch][3] = {
    {1. / 4, 0., 0.}, {-1. / 6, -1. / 6, -1. / 6}, {-1. / 6, 1. / 6, -1. / 6},
    {1. / 24, 1. / 12, 1. / 6}, {1. / 24, -1. / 12, 1. / 6}, {0., 0., 1.}};

// U = G g G^T of the 16 filters g = w[k0 + v][c] (v < 16; of a transposed convolution's weight:
// w[c][k0 + v] flipped), in double: dst[p * stride + v] for the 36 positions p. w is read with
// its strides `ws` (the networks keep conv weights channels-last: no contiguous copy per call).
void transform_filters(const float* wp, const int64_t* ws, bool transposed, int64_t k0, int64_t c, float* dst,
                       int64_t stride) {
    double g[3][3][kLanes], half[kPatch][3][kLanes];
    for (int64_t r = 0; r < 3; ++r)
        for (int64_t s = 0; s < 3; ++s)
            for (int64_t v = 0; v < kLanes; ++v) {
                const int64_t k = k0 + v;
                g[r][s][v] = transposed ? wp[c * ws[0] + k * ws[1] + (2 - r) * ws[2] + (2 - s) * ws[3]]
                                        : wp[k * ws[0] + c * ws[1] + r * ws[2] + s * ws[3]];
            }
    for (int64_t a = 0; a < kPatch; ++a)
        for (int64_t s = 0; s < 3; ++s)
            for (int64_t v = 0; v < kLanes; ++v)
                half[a][s][v] = kG[a][0] * g[0][s][v] + kG[a][1] * g[1][s][v] + kG[a][2] * g[2][s][v];
    for (int64_t a = 0; a < kPatch; ++a)
        for (int64_t j = 0; j < kPatch; ++j)
            for (int64_t v = 0; v < kLanes; ++v)
                dst[(a * kPatch + j) * stride + v] =
                    static_cast<float>(half[a][0][v] * kG[j][0] + half[a][1][v] * kG[j][1] + half[a][2][v] * kG[j][2]);
}

// [K, C, 3, 3] weight -> U packed as [36][K / NR][C][NR] (NR = 32 if it divides K, else 16),
// computed in double and rounded once. transposed: w is a transposed convolution's [C, K, 3, 3]
// weight, whose stride-1 op is the convolution with the filter flipped and the channel axes swapped.
at::Tensor winograd_weight(const at::Tensor& weight, bool transposed) {
    TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3 && weight.scalar_type() == at::kFloat,
                "winograd_weight: w must be a float32 [*, *, 3, 3] tensor");
    const at::Tensor& w = weight;
    const int64_t K = transposed ? w.size(1) : w.size(0), C = transposed ? w.size(0) : w.size(1);
    TORCH_CHECK(K % 16 == 0, "winograd_weight: the output channels (", K, ") must be a multiple of 16");
    const int64_t NR = K % 32 == 0 ? 32 : 16;
    auto u = at::empty({kPos, K / NR, C, NR}, w.options());
    const float* wp = w.data_ptr<float>();
    const int64_t ws[4] = {w.stride(0), w.stride(1), w.stride(2), w.stride(3)};
    float* up = u.data_ptr<float>();
    // 16 consecutive k at a time, neighbours in U's panels: the arithmetic vectorises over them.
    // Their transforms for all C go to a scratch [36][C][16] first and then to U one position
    // at a time: written straight away, the 36 positions' rows (K * C floats apart, a multiple
    // of 4 KiB) all compete for the same few cache sets, which made 128x128 weights 4x slower.
    at::parallel_for(0, K / kLanes, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
        std::vector<float> scratch(kPos * C * kLanes);
        for (int64_t k0 = chunk_begin * kLanes; k0 < chunk_end * kLanes; k0 += kLanes) {
            for (int64_t c = 0; c < C; ++c)
                transform_filters(wp, ws, transposed, k0, c, scratch.data() + c * kLanes, C * kLanes);
            for (int64_t p = 0; p < kPos; ++p)
                for (int64_t c = 0; c < C; ++c)
                    std::copy_n(scratch.data() + (p * C + c) * kLanes, kLanes,
                                up + ((p * (K / NR) + k0 / NR) * C + c) * NR + k0 % NR);
        }
    });
    return u;
}

// The geometry of the convolution of x ([N, C, H, W] float32 CPU, channels-last) to K channels
// with this padding, after checking what both operators need of them.
Geometry conv_geometry(const char* op, const at::Tensor& x, int64_t K, int64_t pad_y, int64_t pad_x) {
    TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu(), op,
                ": x must be a 4-D float32 CPU tensor");
    TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), op, ": x must be channels-last");
    TORCH_CHECK(pad_y >= 0 && pad_x >= 0 && pad_y <= 2 && pad_x <= 2, op, ": padding must be 0..2");
    Geometry g{};
    g.N = x.size(0), g.C = x.size(1), g.H = x.size(2), g.W = x.size(3), g.K = K;
    TORCH_CHECK(g.C % kLanes == 0 && g.K % kLanes == 0, op, ": channels must be multiples of 16");
    g.pad_y = pad_y, g.pad_x = pad_x;
    g.Ho = g.H + 2 * pad_y - 2, g.Wo = g.W + 2 * pad_x - 2;
    TORCH_CHECK(g.Ho > 0 && g.Wo > 0, op, ": the input is smaller than the filter");
    g.tiles_y = (g.Ho + kTile - 1) / kTile, g.tiles_x = (g.Wo + kTile - 1) / kTile;
    g.T = g.N * g.tiles_y * g.tiles_x;
    return g;
}

at::Tensor winograd_conv3x3(const at::Tensor& x, const at::Tensor& u, const c10::optional<at::Tensor>& bias,
                            int64_t pad_y, int64_t pad_x) {
    TORCH_CHECK(u.dim() == 4 && u.size(0) == kPos && u.scalar_type() == at::kFloat && u.is_contiguous() &&
                (u.size(3) == 16 || u.size(3) == 32),
                "winograd_conv3x3: u must be the packed transformed weight [36, K / NR, C, NR], NR = 16 or 32");
    const int64_t NR = u.size(3);
    const Geometry g = conv_geometry("winograd_conv3x3", x, u.size(1) * NR, pad_y, pad_x);
    TORCH_CHECK(u.size(2) == g.C, "winograd_conv3x3: u has ", u.size(2), " input channels, x has ", g.C);
    const float* bp = nullptr;
    at::Tensor b;
    if (bias.has_value() && bias->defined()) {
        b = bias->contiguous();
        TORCH_CHECK(b.scalar_type() == at::kFloat && b.numel() == g.K, "winograd_conv3x3: bias must be [K] float32");
        bp = b.data_ptr<float>();
    }
    auto y = at::empty({g.N, g.K, g.Ho, g.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
    const float* xp = x.data_ptr<float>();
    const float* up = u.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    const int64_t rows = block_rows(g.C, g.K, g.T);
    const int64_t blocks = (g.T + rows - 1) / rows;
    at::parallel_for(0, blocks, 1, [&](int64_t blk_begin, int64_t blk_end) {
        // Scratch without zero-filling: every element read is written first.
        std::unique_ptr<float[]> V(new float[kPos * rows * g.C]), M(new float[kPos * rows * g.K]);
        for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
            const int64_t t0 = blk * rows, used = std::min(rows, g.T - t0);
            for (int64_t r = 0; r < used; ++r) transform_input(xp, g, tile_origin(g, t0 + r), V.get(), r, rows);
            if (used < rows)  // the last block's spare rows: zeros, whose products are never read
                for (int64_t p = 0; p < kPos; ++p)
                    std::fill_n(V.get() + (p * rows + used) * g.C, (rows - used) * g.C, 0.f);
            for (int64_t p = 0; p < kPos; ++p) {
                const float* Vp = V.get() + p * rows * g.C;
                const float* Up = up + p * g.C * g.K;
                float* Mp = M.get() + p * rows * g.K;
                if (NR == 32)
                    block_matmul<32>(Vp, Up, Mp, rows, g.C, g.K);
                else
                    block_matmul<16>(Vp, Up, Mp, rows, g.C, g.K);
            }
            for (int64_t r = 0; r < used; ++r) transform_output(M.get(), g, tile_origin(g, t0 + r), r, rows, bp, yp);
        }
    });
    return y;
}

// Blocks of tiles are split into groups (one per 4 blocks, at most this many), each summed into
// its own partial gradient in block order, and the partials are then summed in group order:
// the grouping depends on the shapes only, so the sums and their order are the same for any
// thread count (bitwise reproducible). Threads beyond the group count have nothing to do.
constexpr int64_t kGradGroups = 8;

// dU[p] += V[p]^T dM[p] over the tiles of blocks [blk_begin, blk_end).
void accumulate_dU(const float* xp, const float* dyp, const Geometry& g, int64_t rows, int64_t blk_begin,
                   int64_t blk_end, float* V, float* dM, float* dU) {
    for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
        const int64_t t0 = blk * rows, used = std::min(rows, g.T - t0);
        for (int64_t r = 0; r < used; ++r) {
            const TileOrigin o = tile_origin(g, t0 + r);
            transform_input(xp, g, o, V, r, used);
            transform_grad_output(dyp, g, o, dM, r, used);
        }
        for (int64_t p = 0; p < kPos; ++p) {
            const float* Vp = V + p * used * g.C;
            const float* dMp = dM + p * used * g.K;
            if (g.K % 32 == 0)
                block_matmul_tn<32>(Vp, dMp, dU + p * g.C * g.K, used, g.C, g.K);
            else
                block_matmul_tn<16>(Vp, dMp, dU + p * g.C * g.K, used, g.C, g.K);
        }
    }
}

// dw[k][c] = G^T dU[.][c][k] G (in double), 16 consecutive k at a time (contiguous in dU).
void inverse_filter_transform(const float* dU, const Geometry& g, float* dwp) {
    at::parallel_for(0, g.C, 8, [&](int64_t c_begin, int64_t c_end) {
        for (int64_t c = c_begin; c < c_end; ++c)
            for (int64_t k0 = 0; k0 < g.K; k0 += kLanes) {
                double half[kPatch][3][kLanes] = {};  // half[a][s] = sum_j dU[a][j] G[j][s]
                for (int64_t a = 0; a < kPatch; ++a)
                    for (int64_t j = 0; j < kPatch; ++j) {
                        const float* src = dU + ((a * kPatch + j) * g.C + c) * g.K + k0;
                        for (int64_t s = 0; s < 3; ++s)
                            for (int64_t v = 0; v < kLanes; ++v) half[a][s][v] += kG[j][s] * src[v];
                    }
                for (int64_t r = 0; r < 3; ++r)
                    for (int64_t s = 0; s < 3; ++s)
                        for (int64_t v = 0; v < kLanes; ++v) {
                            double sum = 0.;
                            for (int64_t a = 0; a < kPatch; ++a) sum += kG[a][r] * half[a][s][v];
                            dwp[(((k0 + v) * g.C + c) * 3 + r) * 3 + s] = static_cast<float>(sum);
                        }
            }
    });
}

// dw [K, C, 3, 3] of y = conv3x3(x, w, padding) from dy = dL/dy: with M = sum over c of U ⊙ V
// and Y = A^T M A, dM = A dY A^T, dU[p] = V[p]^T dM[p] (summed over tiles) and dw = G^T dU G.
at::Tensor winograd_weight_grad(const at::Tensor& dy, const at::Tensor& x, int64_t pad_y, int64_t pad_x) {
    TORCH_CHECK(dy.dim() == 4 && dy.scalar_type() == at::kFloat && dy.device().is_cpu() &&
                dy.is_contiguous(at::MemoryFormat::ChannelsLast),
                "winograd_weight_grad: dy must be a 4-D float32 CPU tensor, channels-last");
    const Geometry g = conv_geometry("winograd_weight_grad", x, dy.size(1), pad_y, pad_x);
    TORCH_CHECK(dy.size(0) == g.N && dy.size(2) == g.Ho && dy.size(3) == g.Wo,
                "winograd_weight_grad: dy's shape does not match the convolution of x");
    const float* xp = x.data_ptr<float>();
    const float* dyp = dy.data_ptr<float>();
    const int64_t rows = block_rows(g.C, g.K, g.T);
    const int64_t blocks = (g.T + rows - 1) / rows;
    const int64_t groups = std::clamp(blocks / 4, int64_t{1}, kGradGroups);
    const int64_t plane = kPos * g.C * g.K;
    std::vector<float> partial(groups * plane, 0.f);  // one dU per group
    at::parallel_for(0, groups, 1, [&](int64_t grp_begin, int64_t grp_end) {
        std::unique_ptr<float[]> V(new float[kPos * rows * g.C]), dM(new float[kPos * rows * g.K]);
        for (int64_t grp = grp_begin; grp < grp_end; ++grp)
            accumulate_dU(xp, dyp, g, rows, grp * blocks / groups, (grp + 1) * blocks / groups, V.get(), dM.get(),
                          partial.data() + grp * plane);
    });
    float* dU = partial.data();
    for (int64_t grp = 1; grp < groups; ++grp) {  // in group order
        const float* src = partial.data() + grp * plane;
        at::parallel_for(0, plane, 1 << 14, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) dU[i] += src[i];
        });
    }
    auto dw = at::empty({g.K, g.C, 3, 3}, x.options());
    inverse_filter_transform(dU, g, dw.data_ptr<float>());
    return dw;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(triplane3d_cpu, m) {
    m.def("winograd_weight", &winograd_weight);  // packed F(4x4, 3x3) filter transform (CPU)
    m.def("winograd_conv3x3", &winograd_conv3x3);  // stride-1 3x3 conv by F(4x4, 3x3), channels-last (CPU)
    m.def("winograd_weight_grad", &winograd_weight_grad);  // dw of winograd_conv3x3 (CPU)
}
