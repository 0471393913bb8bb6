// Python binding of the upfirdn2d CUDA kernel: argument checks, dtype dispatch and launch.
#include <torch/extension.h>

#include <c10/core/DeviceGuard.h>

#include <cstdint>

#include "upfirdn2d.h"

namespace {

// Keep every coordinate the kernel forms (ox*down - pad, (in-1)*up - base, ...) inside int32.
constexpr int64_t kMaxCoord = int64_t{1} << 29;

void check_coord(int64_t value, const char* name) {
  TORCH_CHECK(value > -kMaxCoord && value < kMaxCoord, "upfirdn2d: ", name, " = ", value,
              " is too large for the CUDA kernel (limit 2^29)");
}

// Output size of one axis; errors name the axis when it would be empty.
int64_t out_size(int64_t in, int64_t up, int64_t pad0, int64_t pad1, int64_t taps, int64_t down,
                 const char* axis) {
  const int64_t padded = in * up + pad0 + pad1;
  check_coord(in * up, axis);
  check_coord(pad0, "pad0");
  check_coord(pad1, "pad1");
  check_coord(padded + down, axis);
  TORCH_CHECK(padded >= taps, "upfirdn2d: empty output along ", axis, ": upsampled and padded size ",
              padded, " is smaller than the filter (", taps, " taps)");
  return (padded - taps + down) / down;
}

torch::Tensor upfirdn2d_cuda(torch::Tensor x, torch::Tensor f, int64_t up_x, int64_t up_y, int64_t down_x,
                             int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1,
                             bool flip, int64_t stream) {
  TORCH_CHECK(x.is_cuda(), "upfirdn2d: x must be a CUDA tensor");
  TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be 4-D [N, C, H, W], got ", x.dim(), " dimensions");
  TORCH_CHECK(f.device() == x.device(), "upfirdn2d: f must be on x's device ", x.device(), ", got ", f.device());
  TORCH_CHECK(f.dim() == 2, "upfirdn2d: f must be a 2-D [fh, fw] filter, got ", f.dim(), " dimensions");
  TORCH_CHECK(f.scalar_type() == torch::kFloat32, "upfirdn2d: f must be float32, got ", f.scalar_type());
  TORCH_CHECK(f.numel() >= 1 && f.numel() <= upfirdn2d::kMaxFilterTaps, "upfirdn2d: f must have 1 to ",
              upfirdn2d::kMaxFilterTaps, " taps, got ", f.numel());
  TORCH_CHECK(up_x >= 1 && up_y >= 1, "upfirdn2d: up must be >= 1, got (", up_x, ", ", up_y, ")");
  TORCH_CHECK(down_x >= 1 && down_y >= 1, "upfirdn2d: down must be >= 1, got (", down_x, ", ", down_y, ")");
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kFloat64 || dtype == torch::kFloat16 ||
                  dtype == torch::kBFloat16,
              "upfirdn2d: x must be float32, float64, float16 or bfloat16, got ", dtype);

  c10::DeviceGuard guard(x.device());
  x = x.contiguous();
  f = f.contiguous();
  const int64_t fh = f.size(0), fw = f.size(1);
  const int64_t out_h = out_size(x.size(2), up_y, pad_y0, pad_y1, fh, down_y, "height");
  const int64_t out_w = out_size(x.size(3), up_x, pad_x0, pad_x1, fw, down_x, "width");
  torch::Tensor y = torch::empty({x.size(0), x.size(1), out_h, out_w}, x.options());

  upfirdn2d::Params p;
  p.x = x.data_ptr();
  p.f = f.data_ptr<float>();
  p.y = y.data_ptr();
  p.planes = x.size(0) * x.size(1);
  p.in_h = static_cast<int>(x.size(2));
  p.in_w = static_cast<int>(x.size(3));
  p.out_h = static_cast<int>(out_h);
  p.out_w = static_cast<int>(out_w);
  p.fh = static_cast<int>(fh);
  p.fw = static_cast<int>(fw);
  p.up_x = static_cast<int>(up_x);
  p.up_y = static_cast<int>(up_y);
  p.down_x = static_cast<int>(down_x);
  p.down_y = static_cast<int>(down_y);
  p.pad_x0 = static_cast<int>(pad_x0);
  p.pad_y0 = static_cast<int>(pad_y0);
  p.flip = flip;

  const auto cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  cudaError_t err = cudaSuccess;
  switch (dtype) {
    case torch::kFloat32: err = upfirdn2d::launch_upfirdn2d<float>(p, cuda_stream); break;
    case torch::kFloat64: err = upfirdn2d::launch_upfirdn2d<double>(p, cuda_stream); break;
    case torch::kFloat16: err = upfirdn2d::launch_upfirdn2d<c10::Half>(p, cuda_stream); break;
    default: err = upfirdn2d::launch_upfirdn2d<c10::BFloat16>(p, cuda_stream); break;
  }
  TORCH_CHECK(err == cudaSuccess, "upfirdn2d: kernel launch failed: ", cudaGetErrorString(err));
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("upfirdn2d", &upfirdn2d_cuda,
        "Upsample (zero insertion), pad/crop, FIR-filter (2-D float32 taps) and downsample an NCHW tensor.",
        pybind11::arg("x"), pybind11::arg("f"), pybind11::arg("up_x"), pybind11::arg("up_y"),
        pybind11::arg("down_x"), pybind11::arg("down_y"), pybind11::arg("pad_x0"), pybind11::arg("pad_x1"),
        pybind11::arg("pad_y0"), pybind11::arg("pad_y1"), pybind11::arg("flip"), pybind11::arg("stream"));
}
