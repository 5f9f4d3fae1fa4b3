// Launcher of the streaming top-k kernel (linear_topk.cu). Plain C++, so the
// kernel compiles without torch's headers; bindings.cpp checks the tensors.
#pragma once

#include <cstdint>

namespace fusedrl {

enum class FloatType { kFloat32, kFloat16, kBFloat16 };

struct LinearTopkArgs {
  const void* hidden;   // [n, h] of `dtype`, contiguous
  const void* weight;   // [vocab, h] of `dtype`, contiguous
  const float* bias;    // [vocab] or nullptr
  float* logprobs;      // out [n, k], sorted descending
  int64_t* ids;         // out [n, k]
  FloatType dtype;
  int64_t n;
  int64_t vocab;
  int64_t h;
  int k;                // 1 <= k <= min(vocab, kLinearTopkMaxK)
  float inv_temperature;
  float softcap;        // > 0: logits become softcap * tanh(logits / softcap) before the temperature; 0: none
  void* stream;         // cudaStream_t
};

constexpr int kLinearTopkMaxK = 256;  // the kernel sizes its shared memory for at most this k

// Launches the kernel on args.stream; returns nullptr, or the CUDA error message if the launch failed.
const char* linear_topk_launch(const LinearTopkArgs& args);

}  // namespace fusedrl
