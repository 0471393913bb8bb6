// Python binding of the CUDA tri-plane sampler: argument checks, the channel-last copy of the
// planes, and the launches (see plane_sample.h).

#include <torch/extension.h>

#include <c10/core/DeviceGuard.h>

#include "plane_sample.h"

namespace {

void check_grid(const torch::Tensor& grid, int64_t B, int64_t P) {
  TORCH_CHECK(grid.is_cuda() && grid.scalar_type() == torch::kFloat32,
              "plane_sample: grid must be a float32 CUDA tensor");
  TORCH_CHECK(grid.dim() == 4 && grid.size(0) == B && grid.size(1) == P && grid.size(3) == 2,
              "plane_sample: grid must be [B,P,M,2] with B=", B, " and P=", P, ", got ", grid.sizes());
  TORCH_CHECK(grid.is_contiguous(), "plane_sample: grid must be contiguous");
}

plane_sample::Params params(const torch::Tensor& grid, int64_t C, int64_t H, int64_t W) {
  plane_sample::Params p{};
  p.grid = grid.data_ptr<float>();
  p.B = grid.size(0);
  p.P = grid.size(1);
  p.M = grid.size(2);
  p.C = C;
  p.H = H;
  p.W = W;
  return p;
}

}  // namespace

// planes [B,P,C,H,W] (any strides), grid [B,P,M,2] contiguous -> [B,M,C].
torch::Tensor sample_mean_forward(torch::Tensor planes, torch::Tensor grid, int64_t stream) {
  TORCH_CHECK(planes.is_cuda() && planes.scalar_type() == torch::kFloat32,
              "plane_sample: planes must be a float32 CUDA tensor");
  TORCH_CHECK(planes.dim() == 5, "plane_sample: planes must be [B,P,C,H,W], got ", planes.sizes());
  TORCH_CHECK(grid.device() == planes.device(), "plane_sample: grid is on ", grid.device(), ", planes on ",
              planes.device());
  check_grid(grid, planes.size(0), planes.size(1));
  c10::DeviceGuard guard(planes.device());
  // Channel-last copy [B,P,H,W,C]; free when the planes already have that layout.
  const torch::Tensor cl = planes.permute({0, 1, 3, 4, 2}).contiguous();
  auto out = torch::empty({planes.size(0), grid.size(2), planes.size(2)}, planes.options());
  plane_sample::Params p = params(grid, planes.size(2), planes.size(3), planes.size(4));
  p.planes = cl.data_ptr<float>();
  p.out = out.data_ptr<float>();
  const cudaError_t err = plane_sample::launch_sample_mean_forward(p, reinterpret_cast<cudaStream_t>(stream));
  TORCH_CHECK(err == cudaSuccess, "plane_sample: forward kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

// grad_out [B,M,C] -> the planes' gradient [B,P,C,H,W] (a view of a channel-last buffer).
torch::Tensor sample_mean_backward(torch::Tensor grad_out, torch::Tensor grid, int64_t C, int64_t H, int64_t W,
                                   int64_t stream) {
  TORCH_CHECK(grid.device() == grad_out.device(), "plane_sample: grid is on ", grid.device(), ", grad_out on ",
              grad_out.device());
  check_grid(grid, grad_out.size(0), grid.size(1));
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(1) == grid.size(2) && grad_out.size(2) == C,
              "plane_sample: grad_out must be [B,M,C] = [", grid.size(0), ",", grid.size(2), ",", C, "], got ",
              grad_out.sizes());
  c10::DeviceGuard guard(grid.device());
  const torch::Tensor go = grad_out.to(torch::kFloat32).contiguous();
  auto grad = torch::zeros({grid.size(0), grid.size(1), H, W, C}, go.options());
  plane_sample::Params p = params(grid, C, H, W);
  p.grad_out = go.data_ptr<float>();
  p.out = grad.data_ptr<float>();
  const cudaError_t err = plane_sample::launch_sample_mean_backward(p, reinterpret_cast<cudaStream_t>(stream));
  TORCH_CHECK(err == cudaSuccess, "plane_sample: backward kernel launch failed: ", cudaGetErrorString(err));
  return grad.permute({0, 1, 4, 2, 3});
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sample_mean_forward", &sample_mean_forward, "Mean over planes of bilinear plane samples (CUDA)",
        py::arg("planes"), py::arg("grid"), py::arg("stream"));
  m.def("sample_mean_backward", &sample_mean_backward, "Gradient of sample_mean_forward w.r.t. the planes (CUDA)",
        py::arg("grad_out"), py::arg("grid"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("stream"));
}
