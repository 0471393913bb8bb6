// CUDA kernels of plane_sample.py: the mean over P planes of bilinear samples, and its gradient
// with respect to the planes.
//
// One thread per (point, channel), channel fastest: the lanes of a warp share a point (its grid
// coordinates are one broadcast load) and read consecutive channels of each corner texel from
// channel-last planes, so every corner is one coalesced 128-byte access for 32 channels. torch's
// grid_sample instead gives a thread one point and loops over NCHW channels, H*W apart. The
// backward adds into a channel-last gradient with atomics that coalesce the same way, where
// grid_sample's scatter per channel lands on 32 different cache lines. The mean over planes
// is accumulated in registers, so the [B*P,C,M] intermediate and its reduction are gone too.
//
// Coordinates follow F.grid_sample (align_corners=False: -1 and 1 are the outer edges of the
// border pixels) and are clamped to [-2, size+1], where no corner is inside any more, so far
// or NaN points sample zero and convert to integers safely.

#include <cuda_runtime.h>

#include <cstdint>

#include "plane_sample.h"

namespace plane_sample {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535 * 8;  // grid-stride loop covers the rest

struct Corner {
  int x0, y0;     // top-left corner in pixels (may lie outside the plane)
  float wx1, wy1;  // weights of the right column and the bottom row
};

__device__ __forceinline__ Corner locate(const float* __restrict__ g, int64_t W, int64_t H) {
  const float ix = fminf(fmaxf(((g[0] + 1.f) * W - 1.f) * 0.5f, -2.f), static_cast<float>(W + 1));
  const float iy = fminf(fmaxf(((g[1] + 1.f) * H - 1.f) * 0.5f, -2.f), static_cast<float>(H + 1));
  const float fx = floorf(ix), fy = floorf(iy);
  return {static_cast<int>(fx), static_cast<int>(fy), ix - fx, iy - fy};
}

__global__ void sample_mean_forward_kernel(Params p) {
  const int64_t n = p.B * p.M * p.C;
  const float scale = 1.f / static_cast<float>(p.P);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = i % p.C, bm = i / p.C, m = bm % p.M, b = bm / p.M;
    float acc = 0.f;
    for (int64_t q = 0; q < p.P; ++q) {
      const int64_t plane = b * p.P + q;
      const Corner k = locate(p.grid + (plane * p.M + m) * 2, p.W, p.H);
      const float* base = p.planes + plane * p.H * p.W * p.C + c;
      float sum = 0.f;
#pragma unroll
      for (int dy = 0; dy < 2; ++dy) {
        const int y = k.y0 + dy;
        if (y < 0 || y >= p.H) continue;
        const float wy = dy ? k.wy1 : 1.f - k.wy1;
#pragma unroll
        for (int dx = 0; dx < 2; ++dx) {
          const int x = k.x0 + dx;
          if (x < 0 || x >= p.W) continue;
          sum += wy * (dx ? k.wx1 : 1.f - k.wx1) * __ldg(base + (y * p.W + x) * p.C);
        }
      }
      acc += sum;
    }
    p.out[i] = acc * scale;
  }
}

__global__ void sample_mean_backward_kernel(Params p) {
  const int64_t n = p.B * p.M * p.C;
  const float scale = 1.f / static_cast<float>(p.P);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = i % p.C, bm = i / p.C, m = bm % p.M, b = bm / p.M;
    const float g = p.grad_out[i] * scale;
    if (g == 0.f) continue;  // nothing to add (also skips the atomics of masked-out rays)
    for (int64_t q = 0; q < p.P; ++q) {
      const int64_t plane = b * p.P + q;
      const Corner k = locate(p.grid + (plane * p.M + m) * 2, p.W, p.H);
      float* base = p.out + plane * p.H * p.W * p.C + c;
#pragma unroll
      for (int dy = 0; dy < 2; ++dy) {
        const int y = k.y0 + dy;
        if (y < 0 || y >= p.H) continue;
        const float wy = dy ? k.wy1 : 1.f - k.wy1;
#pragma unroll
        for (int dx = 0; dx < 2; ++dx) {
          const int x = k.x0 + dx;
          if (x < 0 || x >= p.W) continue;
          atomicAdd(base + (y * p.W + x) * p.C, wy * (dx ? k.wx1 : 1.f - k.wx1) * g);
        }
      }
    }
  }
}

int blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

}  // namespace

cudaError_t launch_sample_mean_forward(const Params& p, cudaStream_t stream) {
  const int64_t n = p.B * p.M * p.C;
  if (n == 0) return cudaSuccess;
  sample_mean_forward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_sample_mean_backward(const Params& p, cudaStream_t stream) {
  const int64_t n = p.B * p.M * p.C;
  if (n == 0) return cudaSuccess;
  sample_mean_backward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace plane_sample
