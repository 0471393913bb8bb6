// Element access shared by the CPU kernels: float32 tensors, and bfloat16 ones (a CPU bf16
// block's activations, see torch_utils/precision.py) stored as the upper 16 bits of a float32.
// A kernel templated on the element type T (float, or uint16_t for bfloat16) reads with
// load(), computes in float32 and writes with store(), so bf16 costs one rounding per stored
// element. Written as integer arithmetic so that the loops vectorise; rounding to bf16 is to
// nearest even, and a NaN becomes the quiet NaN 0x7FC0, as in c10::BFloat16.

#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstring>

namespace triplane3d_cpu {

inline float load(const float* p, int64_t i) { return p[i]; }

inline float load(const uint16_t* p, int64_t i) {
    const uint32_t u = static_cast<uint32_t>(p[i]) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

inline void store(float* p, int64_t i, float v) { p[i] = v; }

inline void store(uint16_t* p, int64_t i, float v) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
    p[i] = static_cast<uint16_t>(nan ? 0x7FC0u : rounded);
}

// t's elements as T (t must be float32 for T = float, bfloat16 for T = uint16_t).
template <typename T>
T* elements(const at::Tensor& t) {
    return reinterpret_cast<T*>(t.data_ptr());
}

// Calls body(T{}) with T = float for a float32 x, uint16_t for a bfloat16 one.
template <typename F>
void dispatch_elem(const at::Tensor& x, F body) {
    if (x.scalar_type() == at::kBFloat16) body(uint16_t{});
    else body(float{});
}

}  // namespace triplane3d_cpu
