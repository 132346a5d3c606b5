// Fused elementwise CPU ops for the decode path. Each reproduces transformers' rounding points in
// the model dtype (so bf16 results match the unfused PyTorch ops), while making one pass.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "cpu_common.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define CORRAL_FUSED_AVX2 1
#endif

namespace {

inline float to_float(float x) { return x; }
inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }
inline float to_float(at::Half x) { return static_cast<float>(x); }
inline float to_float(double x) { return static_cast<float>(x); }

// Round through the storage type (a no-op for float): the value PyTorch would hold there.
template <typename T>
inline float round_to(float x) { return to_float(static_cast<T>(x)); }


#ifdef CORRAL_FUSED_AVX2
// Eight lanes of float or bfloat16 storage as floats, and back with the rounding c10 uses
// (nearest even; NaN to the quiet NaN 0x7FC0), so a vector lane holds what a scalar would.
template <typename T>
constexpr bool kVectorizable = std::is_same_v<T, float> || std::is_same_v<T, at::BFloat16>;

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::BFloat16* p) { return corral_cpu::load_bf16x8(p); }
using corral_cpu::bf16_bits;
inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void store8(at::BFloat16* p, __m256 v) { corral_cpu::store_bf16x8(p, v); }
// The value each lane would hold stored as T (round_to below, eight at a time).
template <typename T>
inline __m256 round8(__m256 v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return _mm256_castsi256_ps(_mm256_slli_epi32(bf16_bits(v), 16));
  }
}
inline float horizontal_sum(__m256 v) {
  const __m128 pairs = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 halves = _mm_add_ps(pairs, _mm_movehl_ps(pairs, pairs));
  return _mm_cvtss_f32(_mm_add_ss(halves, _mm_shuffle_ps(halves, halves, 1)));
}
// e^x to about one float ulp (Cephes' expf polynomial after a two-part ln 2 reduction); x is
// clamped to [-87, 88], where e^x and 2^n stay normal floats.
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.f)), _mm256_set1_ps(88.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.f));
  const __m256i scale =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}
#if defined(__AVX512F__)
#define CORRAL_FUSED_AVX512 1
// Sixteen lanes: the same operations per lane as the eight-lane forms above (the same
// polynomial, division and rounding), so every lane holds the same bits.
using corral_cpu::load_float16;
using corral_cpu::bf16_bits16;
inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(at::BFloat16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_bits16(v)));
}
template <typename T>
inline __m512 round16(__m512 v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return _mm512_castsi512_ps(_mm512_slli_epi32(bf16_bits16(v), 16));
  }
}
#endif
#else
template <typename T>
constexpr bool kVectorizable = false;
#endif

// Elementwise work (elements) a parallel chunk gets at least: a vectorized element costs about a
// nanosecond, so less is cheaper on one thread than the cost of sharing it.
constexpr int64_t kMinParallelElements = 1 << 15;

// The same where threads spin between calls (min_parallel_work() below its passive value, so a
// second thread costs a microsecond or two): a 32-row decode step's norms (18,432 elements of a
// 576-wide model) then run on both threads instead of one.
inline int64_t min_parallel_elements() {
  return corral_cpu::min_parallel_work() < corral_cpu::kPassiveMinParallelWork
             ? kMinParallelElements / 4
             : kMinParallelElements;
}

// One row of rms_norm: with residual, residual += x (rounded to T) first and the new residual is
// normalized. The vector path sums squares in eight lanes then across them; the scalar one in
// order (the two may differ in the last bit of the sum, as PyTorch's own paths do).
template <typename T>
void rms_norm_row(T* o, const T* in, T* res, const T* weight, int64_t size, float eps) {
  int64_t i = 0;
  float sum = 0.f;
#ifdef CORRAL_FUSED_AVX2
  if constexpr (kVectorizable<T>) {
    __m256 squares = _mm256_setzero_ps();
#ifdef CORRAL_FUSED_AVX512
    // Sixteen at a time, the squares summed as two eight-lane halves in element order: the
    // same sums as the eight-lane loop.
    for (; i + 16 <= size; i += 16) {
      __m512 v = load_float16(in + i);
      if (res) {
        v = round16<T>(_mm512_add_ps(load_float16(res + i), v));
        store16(res + i, v);
      }
      const __m256 low = _mm512_castps512_ps256(v);
      const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
      squares = _mm256_fmadd_ps(low, low, squares);
      squares = _mm256_fmadd_ps(high, high, squares);
    }
#endif
    for (; i + 8 <= size; i += 8) {
      __m256 v = load8(in + i);
      if (res) {
        v = round8<T>(_mm256_add_ps(load8(res + i), v));
        store8(res + i, v);
      }
      squares = _mm256_fmadd_ps(v, v, squares);
    }
    sum = horizontal_sum(squares);
  }
#endif
  for (int64_t j = i; j < size; ++j) {
    float v = to_float(in[j]);
    if (res) {
      const T value = static_cast<T>(to_float(res[j]) + v);
      res[j] = value;
      v = to_float(value);
    }
    sum += v * v;
  }
  if (res) in = res;
  const float inverse = 1.f / std::sqrt(sum / static_cast<float>(size) + eps);
#ifdef CORRAL_FUSED_AVX2
  if constexpr (kVectorizable<T>) {
    i = 0;
#ifdef CORRAL_FUSED_AVX512
    const __m512 scale16 = _mm512_set1_ps(inverse);
    for (; i + 16 <= size; i += 16) {
      const __m512 normed = round16<T>(_mm512_mul_ps(load_float16(in + i), scale16));
      store16(o + i, _mm512_mul_ps(load_float16(weight + i), normed));
    }
#endif
    const __m256 scale = _mm256_set1_ps(inverse);
    for (; i + 8 <= size; i += 8) {
      store8(o + i, _mm256_mul_ps(load8(weight + i), round8<T>(_mm256_mul_ps(load8(in + i), scale))));
    }
  }
#endif
  for (int64_t j = i; j < size; ++j) {
    o[j] = static_cast<T>(to_float(weight[j]) * round_to<T>(to_float(in[j]) * inverse));
  }
}

template <typename T>
void rms_norm_rows(T* out, const T* x, T* residual, const T* weight, int64_t rows, int64_t size,
                   float eps) {
  const int64_t grain =
      std::max<int64_t>(1, min_parallel_elements() / std::max<int64_t>(1, size));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      rms_norm_row(out + r * size, x + r * size, residual ? residual + r * size : nullptr, weight,
                   size, eps);
    }
  });
}

// One row of silu(gate) * up, each product rounded to T as PyTorch's separate ops round it.
template <typename T>
void silu_and_mul_row(T* o, const T* gate, const T* up, int64_t size) {
  int64_t i = 0;
#ifdef CORRAL_FUSED_AVX512
  if constexpr (kVectorizable<T>) {
    for (; i + 16 <= size; i += 16) {
      const __m512 g = load_float16(gate + i);
      const __m512 activated = round16<T>(corral_cpu::silu16(g));
      store16(o + i, _mm512_mul_ps(activated, load_float16(up + i)));
    }
  }
#endif
#ifdef CORRAL_FUSED_AVX2
  if constexpr (kVectorizable<T>) {
    const __m256 one = _mm256_set1_ps(1.f);
    for (; i + 8 <= size; i += 8) {
      const __m256 g = load8(gate + i);
      const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
      const __m256 activated = round8<T>(_mm256_div_ps(g, _mm256_add_ps(one, e)));
      store8(o + i, _mm256_mul_ps(activated, load8(up + i)));
    }
  }
#endif
  for (; i < size; ++i) {
    const float g = to_float(gate[i]);
    const float activated = round_to<T>(g / (1.f + std::exp(-g)));
    o[i] = static_cast<T>(activated * to_float(up[i]));
  }
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
    const scalar_t* in = gate_up.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kMinParallelElements / std::max<int64_t>(1, size));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        silu_and_mul_row(o + r * size, in + r * 2 * size, in + r * 2 * size + size, size);
      }
    });
  });
  return out;
}
