// Fused elementwise CPU ops for the decode path. Each reproduces transformers' rounding points in
// the model dtype (so bf16 results match the unfused PyTorch ops), while making one pass.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>

namespace {

inline float to_float(float x) { return x; }
inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }
inline float to_float(at::Half x) { return static_cast<float>(x); }
inline float to_float(double x) { return static_cast<float>(x); }

// Round through the storage type (a no-op for float): the value PyTorch would hold there.
template <typename T>
inline float round_to(float x) { return to_float(static_cast<T>(x)); }

template <typename T>
void rms_norm_rows(T* out, const T* x, T* residual, const T* weight, int64_t rows, int64_t size,
                   float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* in = x + r * size;
      T* res = residual ? residual + r * size : nullptr;
      float sum = 0.f;
      if (res) {
        // residual = residual + x (rounded to T), then normalize the new residual.
        for (int64_t i = 0; i < size; ++i) {
          const T value = static_cast<T>(to_float(res[i]) + to_float(in[i]));
          res[i] = value;
          const float v = to_float(value);
          sum += v * v;
        }
        in = res;
      } else {
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < size; ++i) sum += to_float(in[i]) * to_float(in[i]);
      }
      const float inverse = 1.f / std::sqrt(sum / static_cast<float>(size) + eps);
      T* o = out + r * size;
      for (int64_t i = 0; i < size; ++i) {
        o[i] = static_cast<T>(to_float(weight[i]) * round_to<T>(to_float(in[i]) * inverse));
      }
    }
  });
}

}  // namespace

// out = weight * normalize(x) per row; with residual: residual += x first, then normalize it.
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps,
                       c10::optional<torch::Tensor> residual) {
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), "rms_norm: contiguous inputs");
  auto out = torch::empty_like(x);
  const int64_t size = x.size(-1), rows = x.numel() / size;
  if (residual.has_value()) TORCH_CHECK(residual->is_contiguous());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    rms_norm_rows<scalar_t>(out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                            residual.has_value() ? residual->data_ptr<scalar_t>() : nullptr,
                            weight.data_ptr<scalar_t>(), rows, size, static_cast<float>(eps));
  });
  return out;
}

// Rotate, in place, the first num_heads heads of each row of qkv [num_tokens, width] (q and k
// side by side): x * cos + rotate_half(x) * sin, with cos/sin [max_positions, head_dim].
void rotary_inplace(torch::Tensor qkv, torch::Tensor positions, torch::Tensor cos,
                    torch::Tensor sin, int64_t num_heads, int64_t head_dim) {
  TORCH_CHECK(qkv.is_contiguous() && cos.is_contiguous() && sin.is_contiguous());
  TORCH_CHECK(positions.scalar_type() == torch::kInt64);
  const int64_t tokens = qkv.size(0), width = qkv.size(1), half = head_dim / 2;
  const int64_t* pos = positions.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "rotary", [&] {
    scalar_t* data = qkv.data_ptr<scalar_t>();
    const scalar_t* c = cos.data_ptr<scalar_t>();
    const scalar_t* s = sin.data_ptr<scalar_t>();
    at::parallel_for(0, tokens * num_heads, 64, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t t = item / num_heads, h = item % num_heads;
        scalar_t* x = data + t * width + h * head_dim;
        const scalar_t* cr = c + pos[t] * head_dim;
        const scalar_t* sr = s + pos[t] * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = to_float(x[i]), x2 = to_float(x[i + half]);
          using T = scalar_t;
          // out[i] = x1*cos[i] + (-x2)*sin[i]; out[i+half] = x2*cos[i+half] + x1*sin[i+half]
          const float a = round_to<T>(x1 * to_float(cr[i])) + round_to<T>(-x2 * to_float(sr[i]));
          const float b = round_to<T>(x2 * to_float(cr[i + half])) +
                          round_to<T>(x1 * to_float(sr[i + half]));
          x[i] = static_cast<T>(a);
          x[i + half] = static_cast<T>(b);
        }
      }
    });
  });
}

// gate_up [rows, 2 * size] -> silu(gate) * up [rows, size].
torch::Tensor silu_and_mul(torch::Tensor gate_up) {
  TORCH_CHECK(gate_up.is_contiguous());
  const int64_t rows = gate_up.size(0), size = gate_up.size(1) / 2;
  auto out = torch::empty({rows, size}, gate_up.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gate_up.scalar_type(), "silu", [&] {
    using T = scalar_t;
    const T* in = gate_up.data_ptr<T>();
    T* o = out.data_ptr<T>();
    at::parallel_for(0, rows * size, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        const int64_t r = index / size, i = index % size;
        const float g = to_float(in[r * 2 * size + i]);
        const float activated = round_to<T>(g / (1.f + std::exp(-g)));
        o[index] = static_cast<T>(activated * to_float(in[r * 2 * size + size + i]));
      }
    });
  });
  return out;
}
