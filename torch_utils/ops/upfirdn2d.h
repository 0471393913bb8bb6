// Launch interface of the upfirdn2d kernel, shared by upfirdn2d.cu and upfirdn2d.cpp.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace upfirdn2d {

// Largest fh * fw the kernel takes: the filter is staged in shared memory (16 KiB of float).
// Keep in sync with MAX_CUDA_FILTER_TAPS in upfirdn2d.py.
constexpr int kMaxFilterTaps = 4096;

// Raw launch arguments for one upfirdn2d on a contiguous [N, C, in_h, in_w] input.
// Output pixel (oy, ox) reads the zero-inserted, padded input at rows oy*down_y + ky and
// columns ox*down_x + kx for every filter tap (ky, kx); see upfirdn2d.py for the definition.
struct Params {
  const void* x;    // input, planes * in_h * in_w elements
  const float* f;   // filter, fh * fw float32 taps, row-major (gain already applied)
  void* y;          // output, planes * out_h * out_w elements
  int64_t planes;   // N * C
  int in_h, in_w;
  int out_h, out_w;
  int fh, fw;
  int up_x, up_y;
  int down_x, down_y;
  int pad_x0, pad_y0;  // start padding (end padding only shows in out_h / out_w)
  bool flip;           // true: correlate with f; false: convolve (use f flipped)
};

// Instantiated in upfirdn2d.cu for float, double, c10::Half and c10::BFloat16.
template <typename T>
cudaError_t launch_upfirdn2d(const Params& p, cudaStream_t stream);

}  // namespace upfirdn2d
