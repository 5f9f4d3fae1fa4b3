// Python bindings of fusedrl's CUDA kernels (module fusedrl._C, or its JIT twin fusedrl_C).
#include "linear_topk.h"

#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <tuple>

namespace {

fusedrl::FloatType float_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return fusedrl::FloatType::kFloat32;
    case at::kHalf: return fusedrl::FloatType::kFloat16;
    case at::kBFloat16: return fusedrl::FloatType::kBFloat16;
    default: TORCH_CHECK(false, "linear_topk: expected fp32, fp16 or bf16 inputs, got ", dtype);
  }
}

// hidden [N, H], weight [V, H] (one dtype, contiguous, one CUDA device), bias fp32 [V] or None;
// softcap > 0 caps the logits before the temperature (0: none); `stream` is the handle of the CUDA stream to
// run on. Returns (logprobs [N, k] fp32, ids [N, k] int64).
std::tuple<at::Tensor, at::Tensor> linear_topk(const at::Tensor& hidden, const at::Tensor& weight,
                                               const std::optional<at::Tensor>& bias, int64_t k,
                                               double inv_temperature, double softcap, int64_t stream) {
  TORCH_CHECK(hidden.is_cuda() && weight.device() == hidden.device(),
              "linear_topk: hidden and weight must be on one CUDA device");
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && weight.size(1) == hidden.size(1),
              "linear_topk: expected hidden [N, H] and weight [V, H]");
  TORCH_CHECK(hidden.scalar_type() == weight.scalar_type(), "linear_topk: hidden and weight must share a dtype");
  TORCH_CHECK(hidden.is_contiguous() && weight.is_contiguous(), "linear_topk: hidden and weight must be contiguous");
  TORCH_CHECK(k >= 1 && k <= fusedrl::kLinearTopkMaxK && k <= weight.size(0),
              "linear_topk: k must be in [1, min(V, ", fusedrl::kLinearTopkMaxK, ")], got ", k);
  const float* bias_ptr = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->device() == hidden.device() &&
                    bias->dim() == 1 && bias->size(0) == weight.size(0),
                "linear_topk: bias must be a contiguous fp32 [V] tensor on the device of hidden");
    bias_ptr = bias->data_ptr<float>();
  }
  at::Tensor logprobs = at::empty({hidden.size(0), k}, hidden.options().dtype(at::kFloat));
  at::Tensor ids = at::empty({hidden.size(0), k}, hidden.options().dtype(at::kLong));
  const fusedrl::LinearTopkArgs args{hidden.data_ptr(), weight.data_ptr(), bias_ptr, logprobs.data_ptr<float>(),
                                     ids.data_ptr<int64_t>(), float_type(hidden.scalar_type()), hidden.size(0),
                                     weight.size(0), hidden.size(1), static_cast<int>(k),
                                     static_cast<float>(inv_temperature), static_cast<float>(softcap),
                                     reinterpret_cast<void*>(stream)};
  const char* error = fusedrl::linear_topk_launch(args);
  TORCH_CHECK(error == nullptr, "linear_topk: CUDA launch failed: ", error);
  return {logprobs, ids};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear_topk", &linear_topk,
        "Top-k logprobs [N, k] fp32 and ids [N, k] int64 of "
        "softmax(softcap(hidden @ weight.T + bias) * inv_temperature) (softcap 0: none)",
        pybind11::arg("hidden"), pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("k"),
        pybind11::arg("inv_temperature"), pybind11::arg("softcap"), pybind11::arg("stream"));
}
