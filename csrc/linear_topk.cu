// Streaming top-k logprobs over the vocabulary: linear_topk's CUDA backend.
//
// One block of kThreads threads owns kTokens tokens and streams the whole weight
// in tiles of kTileV rows. Per tile the block computes the [kTokens x kTileV]
// logits from shared-memory slices of hidden and weight (fp32 accumulation,
// kTileH columns at a time), then warp w selects for token w:
//   - each lane keeps an online max / sum-exp of the logits it has seen; the
//     warp combines them into the token's logsumexp at the end;
//   - a logit enters the token's candidate buffer only when its key beats the
//     current k-th best; a full buffer is merged into the sorted running list by
//     a warp bitonic sort of [list | buffer] (2 * kpad keys in shared memory).
// A key packs (logit, id) into 64 bits so that integer order is "larger logit
// first, lower id first among equal logits" (see fusedrl/kernels/topk_keys.py
// for the same rule); keys are unique, so the ranking has no tie ambiguity.
//
// Cost: N H V fp32 FMAs on CUDA cores (no tensor cores); every block streams the
// whole weight (N / kTokens passes, mostly served by L2 since resident blocks walk
// it in step); the selection is a compare per logit plus a warp bitonic sort of
// 2 * kpad keys per kpad admitted candidates, rare once the k-th best settles.
// Shared memory: 11.5 KiB static + 16 * kpad * 8 bytes (<= 32 KiB for k <= 256).
#include "linear_topk.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace {

constexpr int kTokens = 8;
constexpr int kThreads = kTokens * 32;
constexpr int kTileV = 64;
constexpr int kTileH = 32;
constexpr int kRowsPerPass = kThreads / kTileV;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr unsigned long long kEmptyKey = 0ull;

static_assert(kTokens * kTileH == kThreads, "one hidden element per thread per slice");
static_assert(kTokens == 2 * kRowsPerPass, "each thread computes two logits per tile");
static_assert(kTileV % 32 == 0, "every lane sees the same number of logits per tile");
static_assert(kTokens * 2 * fusedrl::kLinearTopkMaxK * sizeof(unsigned long long) +
                      sizeof(float) * (kTokens * kTileH + kTileV * (kTileH + 1) + kTokens * kTileV) <=
                  48 * 1024,
              "shared memory must fit the default 48 KiB per block");

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ unsigned long long sort_key(float z, int64_t id) {
  unsigned bits = __float_as_uint(z);
  if ((bits & 0x7fffffffu) == 0u) bits = 0u;
  bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<unsigned long long>(bits) << 32) | (0xffffffffull - static_cast<unsigned long long>(id));
}

__device__ __forceinline__ float key_logit(unsigned long long key) {
  unsigned bits = static_cast<unsigned>(key >> 32);
  bits = (bits & 0x80000000u) ? (bits & 0x7fffffffu) : ~bits;
  return __uint_as_float(bits);
}

__device__ __forceinline__ int64_t key_id(unsigned long long key) {
  return static_cast<int64_t>(0xffffffffull - (key & 0xffffffffull));
}

// Sorts keys[0, n) descending (n a power of two) with the 32 lanes of one warp.
__device__ __forceinline__ void warp_sort_desc(unsigned long long* keys, int n, int lane) {
  __syncwarp();
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = lane; i < n / 2; i += 32) {
        const int lo = 2 * i - (i & (stride - 1));
        const int hi = lo + stride;
        const bool desc = (lo & size) == 0;
        const unsigned long long a = keys[lo];
        const unsigned long long b = keys[hi];
        if ((a < b) == desc) {
          keys[lo] = b;
          keys[hi] = a;
        }
      }
      __syncwarp();
    }
  }
}

// list[0, kpad) is sorted descending, list[kpad, kpad + count) holds candidates:
// afterwards list[0, kpad) is the best kpad of both, sorted descending.
__device__ __forceinline__ void merge_candidates(unsigned long long* list, int kpad, int count, int lane) {
  for (int i = kpad + count + lane; i < 2 * kpad; i += 32) list[i] = kEmptyKey;
  warp_sort_desc(list, 2 * kpad, lane);
}

__device__ __forceinline__ void online_lse(float z, float& run_max, float& run_sum) {
  if (z > run_max) {
    run_sum = run_sum * __expf(run_max - z) + 1.f;
    run_max = z;
  } else if (z != -INFINITY) {
    run_sum += __expf(z - run_max);
  }
}

// softcap * tanh(logit / softcap), as 1 - 2 / (e^2x + 1): under --use_fast_math nvcc turns tanhf into
// tanh.approx.f32 (relative error ~5e-4, beyond the fp32 tolerance); __expf keeps a few ulp, as the Triton kernel.
__device__ __forceinline__ float capped(float logit, float softcap) {
  return softcap > 0.f ? softcap * (1.f - 2.f / (__expf(2.f * logit / softcap) + 1.f)) : logit;
}

__device__ __forceinline__ float warp_lse(float run_max, float run_sum) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other_max = __shfl_xor_sync(kFullMask, run_max, offset);
    const float other_sum = __shfl_xor_sync(kFullMask, run_sum, offset);
    const float m = fmaxf(run_max, other_max);
    run_sum = (run_max == -INFINITY ? 0.f : run_sum * __expf(run_max - m)) +
              (other_max == -INFINITY ? 0.f : other_sum * __expf(other_max - m));
    run_max = m;
  }
  return run_max + logf(run_sum);
}

template <typename scalar_t>
__global__ void linear_topk_kernel(
    const scalar_t* __restrict__ hidden, const scalar_t* __restrict__ weight, const float* __restrict__ bias,
    float* __restrict__ out_logprobs, int64_t* __restrict__ out_ids,
    int64_t n, int64_t vocab, int64_t h, int k, int kpad, float inv_temperature, float softcap) {
  extern __shared__ unsigned long long lists[];  // [kTokens][2 * kpad]: sorted list, then candidate buffer
  __shared__ float hs[kTokens][kTileH];
  __shared__ float ws[kTileV][kTileH + 1];
  __shared__ float zs[kTokens][kTileV];

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int64_t tok0 = static_cast<int64_t>(blockIdx.x) * kTokens;
  const int64_t token = tok0 + warp;
  const bool active = token < n;
  unsigned long long* list = lists + static_cast<size_t>(warp) * 2 * kpad;
  for (int i = lane; i < 2 * kpad; i += 32) list[i] = kEmptyKey;
  unsigned long long threshold = kEmptyKey;
  int count = 0;
  float run_max = -INFINITY;
  float run_sum = 0.f;

  const int col = tid % kTileV;
  const int row = tid / kTileV;
  for (int64_t v0 = 0; v0 < vocab; v0 += kTileV) {
    float acc0 = 0.f;
    float acc1 = 0.f;
    for (int64_t h0 = 0; h0 < h; h0 += kTileH) {
      __syncthreads();
      {
        const int t = tid / kTileH;
        const int64_t c = h0 + tid % kTileH;
        hs[t][tid % kTileH] = (tok0 + t < n && c < h) ? to_float(hidden[(tok0 + t) * h + c]) : 0.f;
      }
      for (int i = tid; i < kTileV * kTileH; i += kThreads) {
        const int64_t r = v0 + i / kTileH;
        const int64_t c = h0 + i % kTileH;
        ws[i / kTileH][i % kTileH] = (r < vocab && c < h) ? to_float(weight[r * h + c]) : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int c = 0; c < kTileH; ++c) {
        const float w = ws[col][c];
        acc0 = fmaf(hs[row][c], w, acc0);
        acc1 = fmaf(hs[row + kRowsPerPass][c], w, acc1);
      }
    }
    const int64_t v = v0 + col;
    const float b = (bias != nullptr && v < vocab) ? bias[v] : 0.f;
    zs[row][col] = capped(acc0 + b, softcap) * inv_temperature;
    zs[row + kRowsPerPass][col] = capped(acc1 + b, softcap) * inv_temperature;
    __syncthreads();

    if (active) {
      for (int j = lane; j < kTileV; j += 32) {
        const int64_t id = v0 + j;
        const bool valid = id < vocab;
        const float z = zs[warp][j];
        if (valid) online_lse(z, run_max, run_sum);
        const unsigned long long key = valid ? sort_key(z, id) : kEmptyKey;
        bool pass = key > threshold;
        unsigned ballot = __ballot_sync(kFullMask, pass);
        if (ballot == 0u) continue;
        if (count + __popc(ballot) > kpad) {
          merge_candidates(list, kpad, count, lane);
          count = 0;
          threshold = list[k - 1];
          pass = key > threshold;
          ballot = __ballot_sync(kFullMask, pass);
        }
        if (pass) list[kpad + count + __popc(ballot & ((1u << lane) - 1u))] = key;
        count += __popc(ballot);
      }
    }
    __syncthreads();
  }

  if (!active) return;
  if (count > 0) merge_candidates(list, kpad, count, lane);
  const float lse = warp_lse(run_max, run_sum);
  for (int i = lane; i < k; i += 32) {
    const unsigned long long key = list[i];
    out_logprobs[token * k + i] = key_logit(key) - lse;
    out_ids[token * k + i] = key_id(key);
  }
}

template <typename scalar_t>
cudaError_t launch_typed(const fusedrl::LinearTopkArgs& a) {
  int kpad = 32;
  while (kpad < a.k) kpad <<= 1;
  const dim3 grid(static_cast<unsigned>((a.n + kTokens - 1) / kTokens));
  const size_t smem = static_cast<size_t>(kTokens) * 2 * kpad * sizeof(unsigned long long);
  linear_topk_kernel<scalar_t><<<grid, kThreads, smem, static_cast<cudaStream_t>(a.stream)>>>(
      static_cast<const scalar_t*>(a.hidden), static_cast<const scalar_t*>(a.weight), a.bias, a.logprobs, a.ids,
      a.n, a.vocab, a.h, a.k, kpad, a.inv_temperature, a.softcap);
  return cudaGetLastError();
}

}  // namespace

const char* fusedrl::linear_topk_launch(const LinearTopkArgs& args) {
  if (args.k < 1 || args.k > kLinearTopkMaxK || args.k > args.vocab) return "linear_topk: k out of range";
  if (args.n == 0) return nullptr;
  cudaError_t err = cudaErrorInvalidValue;
  switch (args.dtype) {
    case FloatType::kFloat32: err = launch_typed<float>(args); break;
    case FloatType::kFloat16: err = launch_typed<__half>(args); break;
    case FloatType::kBFloat16: err = launch_typed<__nv_bfloat16>(args); break;
  }
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}
