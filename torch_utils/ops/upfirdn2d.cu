// CUDA kernel of upfirdn2d: one thread per output pixel, grid-stride, filter staged in shared memory.
//
// For output pixel (oy, ox) the filter window starts at row oy*down_y - pad_y0 and column
// ox*down_x - pad_x0 of the zero-inserted (upsampled) image. Only taps that land on a real
// input pixel (a multiple of `up` inside the image) contribute, so each axis walks a
// precomputed tap range in steps of `up` and never reads padding or inserted zeros.
// Arithmetic is in float (double for double inputs), whatever the storage type.

#include <cuda_runtime.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

#include "upfirdn2d.h"

namespace upfirdn2d {
namespace {

constexpr int kBlockSize = 256;
// Enough blocks to fill any current GPU; the grid-stride loop covers larger outputs.
constexpr int64_t kMaxBlocks = 65535 * 8;

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

// Taps k = first, first + up, ..., <= last read input index first_index, first_index + 1, ...
struct TapRange {
  int first;
  int last;
  int first_index;
};

// `base` is the upsampled coordinate read by tap 0; tap k reads base + k, which is a real
// input pixel when it is a multiple of `up` and lies in [0, (size - 1) * up].
__device__ __forceinline__ TapRange tap_range(int base, int up, int size, int taps) {
  TapRange r;
  const int lo = max(0, -base);
  const int rem = (-base - lo) % up;  // C++ % keeps the dividend's sign: make it non-negative
  r.first = lo + (rem < 0 ? rem + up : rem);
  r.last = min(taps - 1, (size - 1) * up - base);
  r.first_index = (base + r.first) / up;  // exact: base + first is a non-negative multiple of up
  return r;
}

template <typename T>
__global__ void upfirdn2d_kernel(const Params p) {
  using A = typename Acc<T>::type;
  extern __shared__ float s_f[];
  const int taps = p.fh * p.fw;
  // Store the taps in the order they are correlated with the input, so the inner loop has no
  // flip logic: a full 2-D flip of a row-major array is the reversed linear order.
  for (int i = threadIdx.x; i < taps; i += blockDim.x) {
    s_f[i] = p.flip ? p.f[i] : p.f[taps - 1 - i];
  }
  __syncthreads();

  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const int64_t total = p.planes * p.out_h * p.out_w;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int ox = static_cast<int>(idx % p.out_w);
    const int64_t rest = idx / p.out_w;
    const int oy = static_cast<int>(rest % p.out_h);
    const int64_t plane = rest / p.out_h;
    const T* xp = x + plane * p.in_h * p.in_w;

    const TapRange rx = tap_range(ox * p.down_x - p.pad_x0, p.up_x, p.in_w, p.fw);
    const TapRange ry = tap_range(oy * p.down_y - p.pad_y0, p.up_y, p.in_h, p.fh);
    A acc = 0;
    for (int ky = ry.first, iy = ry.first_index; ky <= ry.last; ky += p.up_y, ++iy) {
      const T* row = xp + static_cast<int64_t>(iy) * p.in_w;
      const float* f_row = s_f + ky * p.fw;
      for (int kx = rx.first, ix = rx.first_index; kx <= rx.last; kx += p.up_x, ++ix) {
        acc += static_cast<A>(row[ix]) * static_cast<A>(f_row[kx]);
      }
    }
    y[idx] = static_cast<T>(acc);
  }
}

}  // namespace

template <typename T>
cudaError_t launch_upfirdn2d(const Params& p, cudaStream_t stream) {
  const int64_t total = p.planes * p.out_h * p.out_w;
  if (total == 0) {
    return cudaSuccess;
  }
  const int64_t blocks = std::min<int64_t>((total + kBlockSize - 1) / kBlockSize, kMaxBlocks);
  const size_t shared_bytes = sizeof(float) * static_cast<size_t>(p.fh) * p.fw;
  upfirdn2d_kernel<T><<<static_cast<unsigned int>(blocks), kBlockSize, shared_bytes, stream>>>(p);
  return cudaGetLastError();
}

template cudaError_t launch_upfirdn2d<float>(const Params&, cudaStream_t);
template cudaError_t launch_upfirdn2d<double>(const Params&, cudaStream_t);
template cudaError_t launch_upfirdn2d<c10::Half>(const Params&, cudaStream_t);
template cudaError_t launch_upfirdn2d<c10::BFloat16>(const Params&, cudaStream_t);

}  // namespace upfirdn2d
