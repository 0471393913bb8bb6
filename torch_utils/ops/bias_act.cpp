// Python binding of the fused bias + activation kernels: argument checks and dtype dispatch.

#include <torch/extension.h>

#include <c10/core/DeviceGuard.h>

#include <string>

#include "bias_act.h"

namespace {

// Every non-empty element tensor must share the layout of `ref`, so that one flat index
// addresses the same element in all of them.
void check_like(const torch::Tensor& t, const torch::Tensor& ref, const char* name) {
  if (t.numel() == 0) return;
  TORCH_CHECK(t.device() == ref.device(), "bias_act: ", name, " is on ", t.device(), ", expected ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "bias_act: ", name, " has dtype ", t.scalar_type(),
              ", expected ", ref.scalar_type());
  TORCH_CHECK(t.sizes() == ref.sizes(), "bias_act: ", name, " has shape ", t.sizes(), ", expected ", ref.sizes());
  TORCH_CHECK(t.strides() == ref.strides(), "bias_act: ", name, " has strides ", t.strides(), ", expected ",
              ref.strides(), " (same memory layout)");
}

// Empty tensors stand for "not used by this mode".
const void* data_or_null(const torch::Tensor& t) { return t.numel() > 0 ? t.data_ptr() : nullptr; }

}  // namespace

// x: pre-bias input; b: bias along `dim`; y: saved output; g: incoming gradient.
// Which of x / y / g are needed depends on `mode` (see bias_act.h); pass empty tensors for the rest.
torch::Tensor bias_act_op(torch::Tensor x, torch::Tensor b, torch::Tensor y, torch::Tensor g, int64_t mode,
                          int64_t act, int64_t dim, double alpha, double gain, double clamp, int64_t stream) {
  TORCH_CHECK(mode >= bias_act::kForward && mode <= bias_act::kGrad2FromX, "bias_act: unknown mode ", mode);
  TORCH_CHECK(act >= 0 && act < bias_act::kNumActs, "bias_act: unknown act code ", act);
  const bool from_y = mode == bias_act::kGradFromY;
  TORCH_CHECK(!from_y || act <= bias_act::kLrelu, "bias_act: mode kGradFromY supports linear/relu/lrelu only");
  const torch::Tensor& lay = from_y ? y : x;
  TORCH_CHECK(lay.numel() > 0, "bias_act: ", from_y ? "y" : "x", " must be a non-empty tensor for mode ", mode);
  TORCH_CHECK(lay.is_cuda(), "bias_act: ", from_y ? "y" : "x", " must be a CUDA tensor");
  TORCH_CHECK(lay.is_non_overlapping_and_dense(), "bias_act: ", from_y ? "y" : "x",
              " must be dense (contiguous in some dimension order)");
  TORCH_CHECK(mode == bias_act::kForward || g.numel() > 0, "bias_act: g (the gradient) is required for mode ", mode);
  check_like(x, lay, "x");
  check_like(y, lay, "y");
  check_like(g, lay, "g");

  int64_t b_len = 0;
  int64_t b_stride = 1;
  if (b.numel() > 0 && !from_y) {
    TORCH_CHECK(dim >= 0 && dim < lay.dim(), "bias_act: dim ", dim, " is out of range for a ", lay.dim(),
                "-D tensor");
    TORCH_CHECK(b.dim() == 1 && b.size(0) == lay.size(dim), "bias_act: b must be 1-D with ", lay.size(dim),
                " elements (x.shape[dim]), got shape ", b.sizes());
    TORCH_CHECK(b.is_contiguous(), "bias_act: b must be contiguous");
    TORCH_CHECK(b.device() == lay.device(), "bias_act: b is on ", b.device(), ", expected ", lay.device());
    TORCH_CHECK(b.scalar_type() == lay.scalar_type(), "bias_act: b has dtype ", b.scalar_type(), ", expected ",
                lay.scalar_type());
    b_len = b.size(0);
    // A size-1 dimension may carry any stride (even 0); its index is always 0.
    b_stride = b_len > 1 ? lay.stride(dim) : 1;
  }

  c10::DeviceGuard guard(lay.device());
  torch::Tensor out = torch::empty_like(lay);  // keeps the dense layout of lay

  bias_act::Params p;
  p.x = from_y ? nullptr : data_or_null(x);
  p.b = b_len > 0 ? b.data_ptr() : nullptr;
  p.y = from_y ? y.data_ptr() : nullptr;
  p.g = data_or_null(g);
  p.out = out.data_ptr();
  p.n = lay.numel();
  p.b_len = b_len;
  p.b_stride = b_stride;
  p.act = static_cast<int>(act);
  p.mode = static_cast<int>(mode);
  p.alpha = alpha;
  p.gain = gain;
  p.clamp = clamp;

  cudaError_t err = cudaSuccess;
  const auto cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, lay.scalar_type(), "bias_act",
                                  [&] { err = bias_act::launch_bias_act<scalar_t>(p, cuda_stream); });
  TORCH_CHECK(err == cudaSuccess, "bias_act: kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bias_act", &bias_act_op, "Fused bias + activation and its derivatives (see bias_act.h for the modes)",
        py::arg("x"), py::arg("b"), py::arg("y"), py::arg("g"), py::arg("mode"), py::arg("act"), py::arg("dim"),
        py::arg("alpha"), py::arg("gain"), py::arg("clamp"), py::arg("stream"));
}
