// CUDA kernels of the fused bias + activation op: forward, first and second derivatives.
//
// One element-wise, grid-stride kernel per (dtype, activation); the mode (forward or which
// derivative) is a uniform runtime branch. Half and bfloat16 are computed in float32,
// float64 in float64. Indices are 64-bit so tensors beyond 2^31 elements work.

#include <cuda_runtime.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

#include "bias_act.h"

namespace bias_act {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;  // grid-stride loop covers the rest

// SELU's fixed scale (its alpha comes from Params::alpha).
constexpr double kSeluScale = 1.0507009873554804934193349852946;

// Compute type: float32 for the 16-bit types and float32, float64 for float64.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

// Overloads so the activation code is written once for float and double.
__device__ __forceinline__ float exp_(float v) { return expf(v); }
__device__ __forceinline__ double exp_(double v) { return exp(v); }
__device__ __forceinline__ float expm1_(float v) { return expm1f(v); }
__device__ __forceinline__ double expm1_(double v) { return expm1(v); }
__device__ __forceinline__ float log1p_(float v) { return log1pf(v); }
__device__ __forceinline__ double log1p_(double v) { return log1p(v); }
__device__ __forceinline__ float tanh_(float v) { return tanhf(v); }
__device__ __forceinline__ double tanh_(double v) { return tanh(v); }
__device__ __forceinline__ float abs_(float v) { return fabsf(v); }
__device__ __forceinline__ double abs_(double v) { return fabs(v); }

// Limits v to [-c, c]; NaN passes through, as in torch.clamp.
template <typename F>
__device__ __forceinline__ F clamp_(F v, F c) {
  return v < -c ? -c : (v > c ? c : v);
}

template <typename F>
__device__ __forceinline__ F sigmoid_(F z) {
  return F(1) / (F(1) + exp_(-z));  // exp overflows to inf for very negative z: result 0, as wanted
}

// act(z).
template <int A, typename F>
__device__ __forceinline__ F act_value(F z, F alpha) {
  if constexpr (A == kLinear) return z;
  if constexpr (A == kRelu) return z > F(0) ? z : F(0);
  if constexpr (A == kLrelu) return z > F(0) ? z : z * alpha;
  if constexpr (A == kTanh) return tanh_(z);
  if constexpr (A == kSigmoid) return sigmoid_(z);
  if constexpr (A == kElu) return z > F(0) ? z : alpha * expm1_(z);
  if constexpr (A == kSelu) return F(kSeluScale) * (z > F(0) ? z : alpha * expm1_(z));
  // log(1 + e^z) written so that neither branch overflows.
  if constexpr (A == kSoftplus) return (z > F(0) ? z : F(0)) + log1p_(exp_(-abs_(z)));
  if constexpr (A == kSwish) return z * sigmoid_(z);
  return F(0);
}

// act'(z).
template <int A, typename F>
__device__ __forceinline__ F act_d1(F z, F alpha) {
  if constexpr (A == kLinear) return F(1);
  if constexpr (A == kRelu) return z > F(0) ? F(1) : F(0);
  if constexpr (A == kLrelu) return z > F(0) ? F(1) : alpha;
  if constexpr (A == kTanh) {
    const F t = tanh_(z);
    return F(1) - t * t;
  }
  if constexpr (A == kSigmoid || A == kSoftplus) {
    const F s = sigmoid_(z);
    return A == kSigmoid ? s * (F(1) - s) : s;
  }
  if constexpr (A == kElu) return z > F(0) ? F(1) : alpha * exp_(z);
  if constexpr (A == kSelu) return F(kSeluScale) * (z > F(0) ? F(1) : alpha * exp_(z));
  if constexpr (A == kSwish) {
    const F s = sigmoid_(z);
    return s * (F(1) + z * (F(1) - s));
  }
  return F(0);
}

// act''(z); zero for the piecewise-linear activations.
template <int A, typename F>
__device__ __forceinline__ F act_d2(F z, F alpha) {
  if constexpr (A == kTanh) {
    const F t = tanh_(z);
    return F(-2) * t * (F(1) - t * t);
  }
  if constexpr (A == kSigmoid) {
    const F s = sigmoid_(z);
    return s * (F(1) - s) * (F(1) - F(2) * s);
  }
  if constexpr (A == kSoftplus) {
    const F s = sigmoid_(z);
    return s * (F(1) - s);
  }
  if constexpr (A == kElu) return z > F(0) ? F(0) : alpha * exp_(z);
  if constexpr (A == kSelu) return z > F(0) ? F(0) : F(kSeluScale) * alpha * exp_(z);
  if constexpr (A == kSwish) {
    const F s = sigmoid_(z);
    return s * (F(1) - s) * (F(2) + z * (F(1) - F(2) * s));
  }
  return F(0);
}

// act'(z) read from the stored output y = clamp(act(z) * gain) for linear, relu and lrelu
// (lrelu with alpha >= 0 only): the sign of y * gain is the sign of z.
template <int A, typename F>
__device__ __forceinline__ F act_d1_from_y(F y, F alpha, F gain) {
  if constexpr (A == kLinear) return F(1);
  const bool positive = gain > F(0) ? y > F(0) : y < F(0);
  if constexpr (A == kRelu) return positive ? F(1) : F(0);
  if constexpr (A == kLrelu) return positive ? F(1) : alpha;
  return F(0);
}

template <typename T, int A>
__global__ void bias_act_kernel(Params p) {
  using F = typename Acc<T>::type;
  const T* x = static_cast<const T*>(p.x);
  const T* b = static_cast<const T*>(p.b);
  const T* y = static_cast<const T*>(p.y);
  const T* g = static_cast<const T*>(p.g);
  T* out = static_cast<T*>(p.out);
  const F alpha = static_cast<F>(p.alpha);
  const F gain = static_cast<F>(p.gain);
  const F clamp = static_cast<F>(p.clamp);
  const bool clamped = p.clamp >= 0.0;

  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += stride) {
    if (p.mode == kGradFromY) {
      // Clamped outputs had no gradient; |y| < clamp tells them apart. y was stored as T, so compare
      // with the clamp rounded to T (0.8 is not a half: a clamped half output reads 0.7998).
      const F yv = static_cast<F>(y[i]);
      const bool pass = !clamped || abs_(yv) < static_cast<F>(static_cast<T>(clamp));
      const F d = pass ? act_d1_from_y<A>(yv, alpha, gain) * gain : F(0);
      out[i] = static_cast<T>(static_cast<F>(g[i]) * d);
      continue;
    }
    F z = static_cast<F>(x[i]);
    if (p.b_len > 0) z += static_cast<F>(b[(i / p.b_stride) % p.b_len]);
    const F v = act_value<A>(z, alpha) * gain;
    if (p.mode == kForward) {
      out[i] = static_cast<T>(clamped ? clamp_(v, clamp) : v);
      continue;
    }
    // Same rule as torch.clamp's gradient: it passes where -clamp <= v <= clamp.
    const bool pass = !clamped || abs_(v) <= clamp;
    const F d = !pass ? F(0) : (p.mode == kGradFromX ? act_d1<A>(z, alpha) : act_d2<A>(z, alpha)) * gain;
    out[i] = static_cast<T>(static_cast<F>(g[i]) * d);
  }
}

template <typename T, int A>
cudaError_t launch_for_act(const Params& p, cudaStream_t stream) {
  const int64_t blocks = (p.n + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
  bias_act_kernel<T, A><<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_bias_act(const Params& p, cudaStream_t stream) {
  if (p.n <= 0) return cudaSuccess;
  switch (p.act) {
    case kLinear: return launch_for_act<T, kLinear>(p, stream);
    case kRelu: return launch_for_act<T, kRelu>(p, stream);
    case kLrelu: return launch_for_act<T, kLrelu>(p, stream);
    case kTanh: return launch_for_act<T, kTanh>(p, stream);
    case kSigmoid: return launch_for_act<T, kSigmoid>(p, stream);
    case kElu: return launch_for_act<T, kElu>(p, stream);
    case kSelu: return launch_for_act<T, kSelu>(p, stream);
    case kSoftplus: return launch_for_act<T, kSoftplus>(p, stream);
    case kSwish: return launch_for_act<T, kSwish>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

template cudaError_t launch_bias_act<float>(const Params&, cudaStream_t);
template cudaError_t launch_bias_act<double>(const Params&, cudaStream_t);
template cudaError_t launch_bias_act<c10::Half>(const Params&, cudaStream_t);
template cudaError_t launch_bias_act<c10::BFloat16>(const Params&, cudaStream_t);

}  // namespace bias_act
