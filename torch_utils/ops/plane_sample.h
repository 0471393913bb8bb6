// Launch interface of the CUDA tri-plane sampler, shared by plane_sample.cu and plane_sample.cpp.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace plane_sample {

// Raw launch arguments. Planes and their gradient are channel-last, [B,P,H,W,C] contiguous, so
// that the C channels of one texel are adjacent: a warp's 32 lanes (32 channels of one point)
// read, or atomically add to, 128 contiguous bytes per corner.
struct Params {
  const float* planes;    // [B,P,H,W,C] (forward)
  const float* grid;      // [B,P,M,2], x along W and y along H, in [-1,1]
  const float* grad_out;  // [B,M,C] (backward)
  float* out;             // forward: [B,M,C]; backward: the planes' gradient [B,P,H,W,C], zeroed
  int64_t B, P, M, C, H, W;
};

// out[b,m,c] = mean_p bilinear sample of plane (b,p) at grid[b,p,m] (zeros padding, align_corners=False).
cudaError_t launch_sample_mean_forward(const Params& p, cudaStream_t stream);
// out (zeroed by the caller) += the gradient of that mean with respect to the planes.
cudaError_t launch_sample_mean_backward(const Params& p, cudaStream_t stream);

}  // namespace plane_sample
