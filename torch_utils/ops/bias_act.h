// Launch interface of the fused bias + activation kernels, shared by bias_act.cu and bias_act.cpp.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace bias_act {

// Activation codes; must match `cuda_index` in bias_act.py's activation_funcs.
enum Act : int {
  kLinear = 0,
  kRelu = 1,
  kLrelu = 2,
  kTanh = 3,
  kSigmoid = 4,
  kElu = 5,
  kSelu = 6,
  kSoftplus = 7,
  kSwish = 8,
  kNumActs = 9,
};

// What the kernel computes per element (z = x + b, v = act(z) * gain, m = clamp mask of v):
enum Mode : int {
  kForward = 0,     // out = clamp(v, -clamp, clamp)
  kGradFromX = 1,   // out = g * gain * act'(z) * m, recomputed from x and b
  kGradFromY = 2,   // out = g * gain * act'(.) * m, read from the saved output y (linear/relu/lrelu only)
  kGrad2FromX = 3,  // out = g * gain * act''(z) * m, recomputed from x and b
};

// Raw launch arguments. All element tensors (x, y, g, out) share one dense layout of n elements;
// the bias index of memory offset i is (i / b_stride) % b_len.
struct Params {
  const void* x;     // pre-bias input (null unless the mode reads it)
  const void* b;     // bias of b_len elements (null when b_len == 0)
  const void* y;     // saved forward output (kGradFromY only)
  const void* g;     // incoming gradient (all modes but kForward)
  void* out;         // result, n elements
  int64_t n;         // number of elements
  int64_t b_len;     // 0 when there is no bias
  int64_t b_stride;  // memory stride (in elements) of the bias dimension, >= 1
  int act;           // an Act code
  int mode;          // a Mode code
  double alpha;      // activation parameter (lrelu slope, elu/selu alpha)
  double gain;       // scale applied after the activation
  double clamp;      // clamp after gain; negative means no clamp
};

// Instantiated in bias_act.cu for float, double, c10::Half and c10::BFloat16.
template <typename T>
cudaError_t launch_bias_act(const Params& p, cudaStream_t stream);

}  // namespace bias_act
