// CPU kernels of plane_sample.py: bilinear sampling of P feature planes at P grids of points,
// averaged over the planes (zeros padding, align_corners=False, as F.grid_sample), and its
// gradient with respect to the planes.
//
// Why a kernel: torch's grid_sample reads an NCHW plane one channel at a time, so each point
// touches 2 cache lines per corner row and channel (64 for 32 channels), and its backward
// scatters the same way. Here each plane is first transposed into a channel-last scratch
// buffer [H*W, C]; a corner is then C contiguous floats (2 cache lines) that the compiler
// vectorises. Planes whose channels are already contiguous (stride 1 along C: the tri-planes
// of a channels-last backbone) are read in place instead (the backward still scatters into a
// compact scratch plane: better locality than the interleaved planes). The
// mean over planes is accumulated in place, so the [B,P,C,M] intermediate, its transpose and
// the mean's pass are gone as well.
//
// Threads (at::parallel_for, i.e. torch's own thread count): over the batch items when there
// are at least as many as threads and planes are small (each item is then one thread's, with
// its own scratch plane); otherwise within each item:
//  - forward: over blocks of points; each output row is written by one thread;
//  - backward: thread t of T owns the buffer rows y with y % T == t and scatters only the
//    corners on those rows.
// No atomics, and every buffer cell receives its contributions in point order whichever
// way the work is split, so the result is bitwise reproducible across thread counts.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

struct Corners {
    int64_t x0, y0;     // top-left corner in pixels (may lie outside the plane)
    float wx1, wy1;     // weights of the right column and the bottom row
};

// align_corners=False: -1 and 1 are the outer edges of the border pixels. Coordinates are
// clamped to [-2, size + 1], where no corner is inside any more, so that far-away (or NaN)
// points convert to integers safely and sample zero.
inline Corners locate(float gx, float gy, int64_t W, int64_t H) {
    const float ix = std::fmin(std::fmax(((gx + 1.f) * W - 1.f) * 0.5f, -2.f), static_cast<float>(W + 1));
    const float iy = std::fmin(std::fmax(((gy + 1.f) * H - 1.f) * 0.5f, -2.f), static_cast<float>(H + 1));
    const float fx = std::floor(ix), fy = std::floor(iy);
    return {static_cast<int64_t>(fx), static_cast<int64_t>(fy), ix - fx, iy - fy};
}

// plane (any strides) -> buf[(y*W + x)*C + c]
void to_channels_last(const float* plane, int64_t C, int64_t H, int64_t W,
                      int64_t sC, int64_t sY, int64_t sX, float* buf) {
    at::parallel_for(0, H, 8, [&](int64_t y_begin, int64_t y_end) {
        for (int64_t y = y_begin; y < y_end; ++y)
            for (int64_t c = 0; c < C; ++c) {
                const float* src = plane + c * sC + y * sY;
                float* dst = buf + y * W * C + c;
                for (int64_t x = 0; x < W; ++x) dst[x * C] = src[x * sX];
            }
    });
}

// buf[(y*W + x)*C + c] -> plane (any strides)
void from_channels_last(const float* buf, int64_t C, int64_t H, int64_t W,
                        int64_t sC, int64_t sY, int64_t sX, float* plane) {
    at::parallel_for(0, H, 8, [&](int64_t y_begin, int64_t y_end) {
        for (int64_t y = y_begin; y < y_end; ++y) {
            if (sC == 1) {  // channel-contiguous planes: one run of C floats per pixel
                for (int64_t x = 0; x < W; ++x)
                    std::copy_n(buf + (y * W + x) * C, C, plane + y * sY + x * sX);
                continue;
            }
            for (int64_t c = 0; c < C; ++c) {
                const float* src = buf + y * W * C + c;
                float* dst = plane + c * sC + y * sY;
                for (int64_t x = 0; x < W; ++x) dst[x * sX] = src[x * C];
            }
        }
    });
}

// Grain of the parallel loop over the batch: 1 (one task per item) when there are at least as
// many items as threads and a plane is small enough for each thread's scratch copy to stay in
// its own cache (the demo's 32x32x16), else B: a single task whose inner loops are parallel
// instead and whose threads share one scratch plane (eg3d-small's 8 MiB 256x256x32 planes:
// 1.8x faster that way than one per thread).
int64_t batch_grain(int64_t B, int64_t plane_floats) {
    constexpr int64_t kPrivatePlaneMaxFloats = 256 * 1024;  // 1 MiB
    const bool by_item = B >= at::get_num_threads() && plane_floats <= kPrivatePlaneMaxFloats &&
                         !at::in_parallel_region();
    return by_item ? 1 : B;
}

void check(const at::Tensor& planes, const at::Tensor& grid) {
    TORCH_CHECK(planes.device().is_cpu() && grid.device().is_cpu(), "plane_sample_cpu: planes and grid must be CPU tensors");
    TORCH_CHECK(planes.scalar_type() == at::kFloat && grid.scalar_type() == at::kFloat,
                "plane_sample_cpu: planes and grid must be float32");
    TORCH_CHECK(planes.dim() == 5, "plane_sample_cpu: planes must be [B,P,C,H,W], got ", planes.sizes());
    TORCH_CHECK(grid.dim() == 4 && grid.size(3) == 2 && grid.size(0) == planes.size(0) && grid.size(1) == planes.size(1),
                "plane_sample_cpu: grid must be [B,P,M,2] with planes' B and P, got ", grid.sizes(),
                " for planes ", planes.sizes());
    TORCH_CHECK(grid.is_contiguous(), "plane_sample_cpu: grid must be contiguous");
}

}  // namespace

// planes [B,P,C,H,W] (any strides), grid [B,P,M,2] contiguous -> [B,M,C]: mean over p of samples.
at::Tensor sample_mean_forward(const at::Tensor& planes, const at::Tensor& grid) {
    check(planes, grid);
    const int64_t B = planes.size(0), P = planes.size(1), C = planes.size(2), H = planes.size(3), W = planes.size(4);
    const int64_t M = grid.size(2);
    auto out = at::zeros({B, M, C}, planes.options());
    const float* pl = planes.data_ptr<float>();
    const float* gr = grid.data_ptr<float>();
    float* o = out.data_ptr<float>();
    const float scale = 1.f / static_cast<float>(P);
    // Planes whose channels are contiguous (tri-planes from a channels-last backbone) are read
    // in place; others are first copied into a channel-last scratch plane.
    const bool direct = planes.stride(2) == 1;
    const int64_t sY = direct ? planes.stride(3) : W * C, sX = direct ? planes.stride(4) : C;
    // Threads over the batch when it has an item per thread (each with its own scratch plane;
    // the nested parallel_for calls below then run inline), else over the points.
    at::parallel_for(0, B, batch_grain(B, H * W * C), [&](int64_t b_begin, int64_t b_end) {
    std::vector<float> buf(direct ? 0 : static_cast<size_t>(H * W * C));
    for (int64_t b = b_begin; b < b_end; ++b)
        for (int64_t p = 0; p < P; ++p) {
            const float* plane = pl + b * planes.stride(0) + p * planes.stride(1);
            if (!direct)
                to_channels_last(plane, C, H, W, planes.stride(2), planes.stride(3), planes.stride(4), buf.data());
            const float* base = direct ? plane : buf.data();
            const float* g = gr + (b * P + p) * M * 2;
            float* ob = o + b * M * C;
            at::parallel_for(0, M, 256, [&](int64_t m_begin, int64_t m_end) {
                for (int64_t m = m_begin; m < m_end; ++m) {
                    const Corners k = locate(g[2 * m], g[2 * m + 1], W, H);
                    float* dst = ob + m * C;
                    for (int dy = 0; dy < 2; ++dy) {
                        const int64_t y = k.y0 + dy;
                        if (y < 0 || y >= H) continue;
                        const float wy = dy ? k.wy1 : 1.f - k.wy1;
                        for (int dx = 0; dx < 2; ++dx) {
                            const int64_t x = k.x0 + dx;
                            if (x < 0 || x >= W) continue;
                            const float w = wy * (dx ? k.wx1 : 1.f - k.wx1) * scale;
                            const float* src = base + y * sY + x * sX;
                            for (int64_t c = 0; c < C; ++c) dst[c] += w * src[c];
                        }
                    }
                }
            });
        }
    });
    return out;
}

// grad_out [B,M,C] -> grad of planes, with the strides of `planes` (whose values are not read).
at::Tensor sample_mean_backward(const at::Tensor& grad_out, const at::Tensor& planes, const at::Tensor& grid) {
    check(planes, grid);
    const int64_t B = planes.size(0), P = planes.size(1), C = planes.size(2), H = planes.size(3), W = planes.size(4);
    const int64_t M = grid.size(2);
    TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == B && grad_out.size(1) == M && grad_out.size(2) == C,
                "plane_sample_cpu: grad_out must be [B,M,C] = [", B, ",", M, ",", C, "], got ", grad_out.sizes());
    const auto go_c = grad_out.to(at::kFloat).contiguous();
    // The scatter always goes to a compact scratch plane, then out with the planes' strides:
    // scattering in place into channel-contiguous tri-planes (pixels 3C floats apart) measured
    // slower, zeroing included.
    auto grad = at::empty_like(planes);
    const float* gr = grid.data_ptr<float>();
    const float* go = go_c.data_ptr<float>();
    float* gp = grad.data_ptr<float>();
    const float scale = 1.f / static_cast<float>(P);
    const int64_t grain = batch_grain(B, H * W * C);
    // Row owners: one when the threads go over the batch, else every thread of the pool.
    const int64_t T = grain < B ? 1 : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), H));
    at::parallel_for(0, B, grain, [&](int64_t b_begin, int64_t b_end) {
    std::vector<float> buf(static_cast<size_t>(H * W * C));
    for (int64_t b = b_begin; b < b_end; ++b)
        for (int64_t p = 0; p < P; ++p) {
            std::fill(buf.begin(), buf.end(), 0.f);
            const float* g = gr + (b * P + p) * M * 2;
            const float* gob = go + b * M * C;
            at::parallel_for(0, T, 1, [&](int64_t t_begin, int64_t t_end) {
                for (int64_t t = t_begin; t < t_end; ++t)
                    for (int64_t m = 0; m < M; ++m) {
                        const Corners k = locate(g[2 * m], g[2 * m + 1], W, H);
                        const float* src = gob + m * C;
                        for (int dy = 0; dy < 2; ++dy) {
                            const int64_t y = k.y0 + dy;
                            if (y < 0 || y >= H || y % T != t) continue;
                            const float wy = dy ? k.wy1 : 1.f - k.wy1;
                            for (int dx = 0; dx < 2; ++dx) {
                                const int64_t x = k.x0 + dx;
                                if (x < 0 || x >= W) continue;
                                const float w = wy * (dx ? k.wx1 : 1.f - k.wx1) * scale;
                                float* dst = buf.data() + (y * W + x) * C;
                                for (int64_t c = 0; c < C; ++c) dst[c] += w * src[c];
                            }
                        }
                    }
            });
            from_channels_last(buf.data(), C, H, W, grad.stride(2), grad.stride(3), grad.stride(4),
                               gp + b * grad.stride(0) + p * grad.stride(1));
        }
    });
    return grad;
}

TORCH_LIBRARY_FRAGMENT(triplane3d_cpu, m) {
    m.def("sample_mean_forward", &sample_mean_forward);  // mean over planes of bilinear plane samples (CPU)
    m.def("sample_mean_backward", &sample_mean_backward);  // gradient of sample_mean_forward w.r.t. the planes (CPU)
}
