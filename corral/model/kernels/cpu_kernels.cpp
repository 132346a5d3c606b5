// CPU kernels for corral's decode path: attention that reads the paged KV cache in place, and
// a matrix-vector product for few-row bfloat16 linears (the single-request decode case).
#include <type_traits>
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX512BF16__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace {

// The least work (multiply-adds) a parallel chunk gets: below it, waking a second thread (tens
// of microseconds with passive OpenMP waits) costs more than it saves (measured on a 2-core
// Zen 4: a 5M multiply-add linear takes as long on two threads as on one).
constexpr int64_t kMinParallelWork = 1 << 22;

// Weight quads per parallel chunk of a few-row linear: at least 16, and kMinParallelWork.
inline int64_t linear_grain(int64_t rows, int64_t in) {
  return std::max<int64_t>(16, kMinParallelWork / std::max<int64_t>(1, 4 * in * rows));
}

inline float to_float(float x) { return x; }
inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }
inline float to_float(at::Half x) { return static_cast<float>(x); }
inline float to_float(int8_t x) { return static_cast<float>(x); }
inline float to_float(double x) { return static_cast<float>(x); }

// exp(x) as 2^n * e^r with |r| <= ln2 / 2 and a degree-6 Taylor polynomial (relative error
// ~1e-7); branch-free so that loops over it vectorize. Arguments below -87 give 0.
inline float fast_exp(float x) {
  x = std::max(x, -87.f);
  const float t = x * 1.4426950408889634f;
  // Round to nearest by adding and subtracting 1.5 * 2^23 (|t| < 2^22 here).
  const float n = (t + 12582912.f) - 12582912.f;
  const float r = (t - n) * 0.6931471805599453f;
  const float p =
      1.f + r * (1.f + r * (0.5f + r * (1.f / 6 + r * (1.f / 24 + r * (1.f / 120 + r / 720)))));
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

template <typename T>
inline float dot_rows(const T* a, const T* b, int64_t n) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += to_float(a[i]) * to_float(b[i]);
  return sum;
}

// dot_rows with the summation order fixed (see dot_four_rows): the same bits for any T.
template <typename T>
inline float dot_rows_fixed(const T* a, const T* b, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int64_t l = 0; l < 16; ++l) acc[l] += to_float(a[i + l]) * to_float(b[i + l]);
  }
  float sum = 0.f;
  for (int64_t l = 0; l < 16; ++l) sum += acc[l];
  for (; i < n; ++i) sum += to_float(a[i]) * to_float(b[i]);
  return sum;
}

// One (request, kv head) of decode attention with an online softmax over the request's blocks.
// query rows [num_heads, head_dim]; keys stored transposed per block [num_blocks, num_kv_heads,
// head_dim, block_size]; values [num_blocks, block_size, num_kv_heads, head_dim]; C is the
// cache's element type: T itself, or int8_t with float16 scales [num_blocks, block_size,
// num_kv_heads]. kHeadDim/kBlock > 0 fix those sizes at compile time (0: read at run time).
template <typename T, typename C, int64_t kHeadDim, int64_t kBlock>
void decode_one(T* out, const T* query, const C* key_cache, const C* value_cache,
                const at::Half* key_scales, const at::Half* value_scales,
                const int64_t* blocks, int64_t seq_len, int64_t kv_head, int64_t group,
                int64_t num_kv_heads, int64_t runtime_head_dim, int64_t runtime_block_size,
                float scale, int64_t window, std::vector<float>& buffer) {
  const int64_t head_dim = kHeadDim > 0 ? kHeadDim : runtime_head_dim;
  const int64_t block_size = kBlock > 0 ? kBlock : runtime_block_size;
  const int64_t value_stride = num_kv_heads * head_dim;
  buffer.assign(group * head_dim * 2 + group * block_size + block_size + head_dim + 2 * group, 0.f);
  float* q = buffer.data();                   // [group, head_dim], scaled
  float* acc = q + group * head_dim;          // [group, head_dim]
  float* scores = acc + group * head_dim;     // [group, block_size]
  float* row = scores + group * block_size;   // [block_size]: one key dimension, converted
  float* value = row + block_size;            // [head_dim]
  float* running_max = value + head_dim;      // [group]
  float* running_sum = running_max + group;   // [group]
  for (int64_t g = 0; g < group; ++g) {
    const T* query_row = query + (kv_head * group + g) * head_dim;
    for (int64_t i = 0; i < head_dim; ++i) q[g * head_dim + i] = to_float(query_row[i]) * scale;
    running_max[g] = -std::numeric_limits<float>::infinity();
  }
  const int64_t start = window > 0 ? std::max<int64_t>(0, seq_len - window) : 0;
  for (int64_t block = start / block_size; block * block_size < seq_len; ++block) {
    const int64_t base = block * block_size;
    const int64_t first = std::max<int64_t>(start - base, 0);
    const int64_t last = std::min<int64_t>(block_size, seq_len - base);
    const int64_t block_id = blocks[block];
    const C* keys = key_cache + (block_id * num_kv_heads + kv_head) * head_dim * block_size;
    for (int64_t i = 0; i < group * block_size; ++i) scores[i] = 0.f;
    // scores[g][t] = sum_d q[g][d] * key[d][t]: vector work over the block's tokens.
    for (int64_t d = 0; d < head_dim; ++d) {
      const C* key_row = keys + d * block_size;
#pragma omp simd
      for (int64_t t = 0; t < block_size; ++t) row[t] = to_float(key_row[t]);
      for (int64_t g = 0; g < group; ++g) {
        const float qd = q[g * head_dim + d];
        float* s = scores + g * block_size;
#pragma omp simd
        for (int64_t t = 0; t < block_size; ++t) s[t] += qd * row[t];
      }
    }
    const int64_t scale_base = block_id * block_size * num_kv_heads + kv_head;
    for (int64_t g = 0; g < group; ++g) {
      float* s = scores + g * block_size;
      float block_max = -std::numeric_limits<float>::infinity();
      for (int64_t t = first; t < last; ++t) {
        if (key_scales) s[t] *= to_float(key_scales[scale_base + t * num_kv_heads]);
        block_max = std::max(block_max, s[t]);
      }
      const float new_max = std::max(running_max[g], block_max);
      const float correction =
          running_max[g] == -std::numeric_limits<float>::infinity()
              ? 0.f
              : fast_exp(running_max[g] - new_max);
      running_sum[g] *= correction;
      float* a = acc + g * head_dim;
#pragma omp simd
      for (int64_t i = 0; i < head_dim; ++i) a[i] *= correction;
      float block_sum = 0.f;
#pragma omp simd reduction(+ : block_sum)
      for (int64_t t = first; t < last; ++t) {
        s[t] = fast_exp(s[t] - new_max);
        block_sum += s[t];
      }
      running_sum[g] += block_sum;
      running_max[g] = new_max;
    }
    const C* values = value_cache + (block_id * block_size * num_kv_heads + kv_head) * head_dim;
    for (int64_t t = first; t < last; ++t) {
      const C* v = values + t * value_stride;
      const float v_scale =
          value_scales ? to_float(value_scales[scale_base + t * num_kv_heads]) : 1.f;
#pragma omp simd
      for (int64_t i = 0; i < head_dim; ++i) value[i] = to_float(v[i]) * v_scale;
      for (int64_t g = 0; g < group; ++g) {
        const float p = scores[g * block_size + t];
        float* a = acc + g * head_dim;
#pragma omp simd
        for (int64_t i = 0; i < head_dim; ++i) a[i] += p * value[i];
      }
    }
  }
  for (int64_t g = 0; g < group; ++g) {
    T* out_row = out + (kv_head * group + g) * head_dim;
    const float inverse = 1.f / running_sum[g];
    for (int64_t i = 0; i < head_dim; ++i) {
      out_row[i] = static_cast<T>(acc[g * head_dim + i] * inverse);
    }
  }
}

template <typename T, typename C>
void decode_all(torch::Tensor& out, const torch::Tensor& query, const torch::Tensor& key_cache,
                const torch::Tensor& value_cache, const at::Half* key_scales,
                const at::Half* value_scales, const int64_t* table, const int64_t* lengths,
                int64_t max_blocks, float scale, int64_t window) {
  const int64_t num_seqs = query.size(0), num_heads = query.size(1), head_dim = query.size(2);
  const int64_t num_kv_heads = value_cache.size(2), block_size = value_cache.size(1);
  const int64_t group = num_heads / num_kv_heads;
  T* out_ptr = out.data_ptr<T>();
  const T* q_ptr = query.data_ptr<T>();
  const C* k_ptr = key_cache.data_ptr<C>();
  const C* v_ptr = value_cache.data_ptr<C>();
  // Split only work worth waking another thread for (a wake-up costs tens of microseconds with
  // passive OpenMP waits): chunks of at least kMinParallelWork multiply-adds.
  int64_t total_len = 0;
  for (int64_t seq = 0; seq < num_seqs; ++seq) total_len += lengths[seq];
  const int64_t work_per_item =
      std::max<int64_t>(1, 2 * group * head_dim * total_len / std::max<int64_t>(1, num_seqs));
  const int64_t grain = std::max<int64_t>(1, kMinParallelWork / work_per_item);
  at::parallel_for(0, num_seqs * num_kv_heads, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer;
    auto run = block_size != 16  ? &decode_one<T, C, 0, 0>
               : head_dim == 64  ? &decode_one<T, C, 64, 16>
               : head_dim == 128 ? &decode_one<T, C, 128, 16>
                                 : &decode_one<T, C, 0, 16>;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t seq = item / num_kv_heads, kv_head = item % num_kv_heads;
      run(out_ptr + seq * num_heads * head_dim, q_ptr + seq * num_heads * head_dim, k_ptr, v_ptr,
          key_scales, value_scales, table + seq * max_blocks, lengths[seq], kv_head, group,
          num_kv_heads, head_dim, block_size, scale, window, buffer);
    }
  });
}

}  // namespace

// out [num_seqs, num_heads, head_dim] = attention of each sequence's single query over its first
// seq_lens[i] cached tokens (the query's own K/V must already be written). Caches hold the
// query's dtype, or int8 with float16 scales [num_blocks, block_size, num_kv_heads].
void paged_decode_attention(torch::Tensor out, torch::Tensor query, torch::Tensor key_cache,
                            torch::Tensor value_cache, torch::Tensor block_table,
                            torch::Tensor seq_lens, double scale, int64_t window,
                            c10::optional<torch::Tensor> key_scale,
                            c10::optional<torch::Tensor> value_scale) {
  TORCH_CHECK(query.is_contiguous() && out.is_contiguous(), "query/out must be contiguous");
  TORCH_CHECK(key_cache.is_contiguous() && value_cache.is_contiguous(), "caches not contiguous");
  TORCH_CHECK(block_table.scalar_type() == torch::kInt64 && block_table.is_contiguous());
  TORCH_CHECK(seq_lens.scalar_type() == torch::kInt64 && seq_lens.is_contiguous());
  const bool quantized = key_cache.scalar_type() == torch::kInt8;
  TORCH_CHECK(quantized == key_scale.has_value() && quantized == value_scale.has_value(),
              "int8 caches need scales, other caches none");
  TORCH_CHECK(quantized || key_cache.scalar_type() == query.scalar_type(), "cache dtype");
  const at::Half* key_scales = quantized ? key_scale->data_ptr<at::Half>() : nullptr;
  const at::Half* value_scales = quantized ? value_scale->data_ptr<at::Half>() : nullptr;
  const int64_t* table = block_table.data_ptr<int64_t>();
  const int64_t* lengths = seq_lens.data_ptr<int64_t>();
  const int64_t max_blocks = block_table.size(1);
  const float scale_f = static_cast<float>(scale);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, query.scalar_type(), "decode", [&] {
    if (quantized) {
      decode_all<scalar_t, int8_t>(out, query, key_cache, value_cache, key_scales, value_scales,
                                   table, lengths, max_blocks, scale_f, window);
    } else {
      decode_all<scalar_t, scalar_t>(out, query, key_cache, value_cache, nullptr, nullptr,
                                     table, lengths, max_blocks, scale_f, window);
    }
  });
}

// out[r, n] = x[r] . weight[n] (+ bias[n]) for 4 consecutive weight rows at once: four
// independent accumulator chains, and each x chunk loaded once for the four rows. The sums run
// in kDotLanes explicit lanes, reduced in a fixed order, so the result is the same bits for any
// T holding the same values (bfloat16 read directly, or converted to float first).
constexpr int64_t kDotLanes = 16;

template <typename T>
inline void dot_four_rows(const T* x, const T* w, int64_t in, float* sums) {
  float acc[4][kDotLanes] = {};
  int64_t i = 0;
  for (; i + kDotLanes <= in; i += kDotLanes) {
    for (int64_t l = 0; l < kDotLanes; ++l) {
      const float xi = to_float(x[i + l]);
      acc[0][l] += xi * to_float(w[i + l]);
      acc[1][l] += xi * to_float(w[in + i + l]);
      acc[2][l] += xi * to_float(w[2 * in + i + l]);
      acc[3][l] += xi * to_float(w[3 * in + i + l]);
    }
  }
  for (int64_t r = 0; r < 4; ++r) {
    float sum = 0.f;
    for (int64_t l = 0; l < kDotLanes; ++l) sum += acc[r][l];
    for (int64_t j = i; j < in; ++j) sum += to_float(x[j]) * to_float(w[r * in + j]);
    sums[r] = sum;
  }
}


#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
inline __m256 load_eight(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load_eight(const at::BFloat16* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
inline __m256 load_eight(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Two accumulators per weight row (eight independent FMA chains), 16 elements a step; the lanes
// are then added in a fixed order, so float, bfloat16 and float16 inputs of equal values give
// equal bits (the few-row path converts to float first; the one-row path does not).
template <typename T>
inline void dot_four_rows_avx2(const T* x, const T* w, int64_t in, float* sums) {
  __m256 acc[4][2];
  for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= in; i += 16) {
    const __m256 x0 = load_eight(x + i);
    const __m256 x1 = load_eight(x + i + 8);
    for (int r = 0; r < 4; ++r) {
      acc[r][0] = _mm256_fmadd_ps(x0, load_eight(w + r * in + i), acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(x1, load_eight(w + r * in + i + 8), acc[r][1]);
    }
  }
  // The four rows' lanes reduced together in a fixed tree: pairwise adds within 128-bit
  // halves (hadd twice), then the two halves.
  const __m256 r0 = _mm256_add_ps(acc[0][0], acc[0][1]);
  const __m256 r1 = _mm256_add_ps(acc[1][0], acc[1][1]);
  const __m256 r2 = _mm256_add_ps(acc[2][0], acc[2][1]);
  const __m256 r3 = _mm256_add_ps(acc[3][0], acc[3][1]);
  const __m256 pairs = _mm256_hadd_ps(_mm256_hadd_ps(r0, r1), _mm256_hadd_ps(r2, r3));
  const __m128 quad = _mm_add_ps(_mm256_castps256_ps128(pairs), _mm256_extractf128_ps(pairs, 1));
  _mm_storeu_ps(sums, quad);
  if (i < in) {
    for (int r = 0; r < 4; ++r) {
      float sum = sums[r];
      for (int64_t j = i; j < in; ++j) sum += to_float(x[j]) * to_float(w[r * in + j]);
      sums[r] = sum;
    }
  }
}

template <>
inline void dot_four_rows<float>(const float* x, const float* w, int64_t in, float* sums) {
  dot_four_rows_avx2(x, w, in, sums);
}
template <>
inline void dot_four_rows<at::Half>(const at::Half* x, const at::Half* w, int64_t in,
                                    float* sums) {
  dot_four_rows_avx2(x, w, in, sums);
}
#if !defined(__AVX512BF16__)
template <>
inline void dot_four_rows<at::BFloat16>(const at::BFloat16* x, const at::BFloat16* w, int64_t in,
                                        float* sums) {
  dot_four_rows_avx2(x, w, in, sums);
}
#endif
#endif

#if defined(__AVX512BF16__)
template <>
inline void dot_four_rows<at::BFloat16>(const at::BFloat16* x, const at::BFloat16* w, int64_t in,
                                        float* sums) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
  int64_t i = 0;
  // The quad's rows are contiguous (4 * in elements); prefetch the same offsets kPrefetchQuads
  // quads ahead so the next rows are on their way while these are multiplied.
  constexpr int64_t kPrefetchQuads = 4;
  const at::BFloat16* ahead = w + kPrefetchQuads * 4 * in;
  for (; i + 32 <= in; i += 32) {
    const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + i);
    for (int r = 0; r < 4; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + r * in + i), _MM_HINT_T0);
      acc[r] = _mm512_dpbf16_ps(acc[r], xv, (__m512bh)_mm512_loadu_si512(w + r * in + i));
    }
  }
  for (int r = 0; r < 4; ++r) {
    float sum = _mm512_reduce_add_ps(acc[r]);
    for (int64_t j = i; j < in; ++j) sum += static_cast<float>(x[j]) * static_cast<float>(w[r * in + j]);
    sums[r] = sum;
  }
}
#endif

// dst[i] = float(src[i]) for i < n, eight at a time where AVX2 is there.
template <typename T>
inline void convert_to_float(const T* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  if constexpr (!std::is_same_v<T, double>) {
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_eight(src + i));
  }
#endif
  for (; i < n; ++i) dst[i] = to_float(src[i]);
}

// Several rows of 16-bit x without native 16-bit dot products: x is converted to float once,
// and each quad of weight rows once (into a per-thread buffer), then every x row takes four
// float dot products against it. The conversions no longer scale with the number of rows, and
// each row's sums are formed exactly as the one-row path forms them (the same dot functions on
// the same values), so a row's output does not depend on how many rows share the call.
template <typename T>
void few_row_linear_converted(const T* x_ptr, const T* w_ptr, const T* b_ptr, T* o_ptr,
                              int64_t rows, int64_t in, int64_t out_features) {
  std::vector<float> x_float(rows * in);
  convert_to_float(x_ptr, x_float.data(), rows * in);
  const int64_t num_quads = (out_features + 3) / 4;
  at::parallel_for(0, num_quads, linear_grain(rows, in), [&](int64_t begin, int64_t end) {
    std::vector<float> w_float(4 * in);
    float sums[4];
    for (int64_t quad = begin; quad < end; ++quad) {
      const int64_t n0 = quad * 4;
      const int64_t count = std::min<int64_t>(4, out_features - n0);
      const T* w_quad = w_ptr + n0 * in;
      convert_to_float(w_quad, w_float.data(), count * in);
      for (int64_t r = 0; r < rows; ++r) {
        const float* x_row = x_float.data() + r * in;
        if (count == 4) {
          dot_four_rows<float>(x_row, w_float.data(), in, sums);
        } else {
          for (int64_t j = 0; j < count; ++j) {
            sums[j] = dot_rows_fixed<float>(x_row, w_float.data() + j * in, in);
          }
        }
        for (int64_t j = 0; j < count; ++j) {
          const float b = b_ptr ? to_float(b_ptr[n0 + j]) : 0.f;
          o_ptr[r * out_features + n0 + j] = static_cast<T>(sums[j] + b);
        }
      }
    }
  });
}

// x [rows, in] @ weight[out, in]^T (+ bias), for few rows: each weight row is read once.
torch::Tensor few_row_linear(torch::Tensor x, torch::Tensor weight,
                             c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), "x and weight must be contiguous");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "x and weight dtypes differ");
  const int64_t rows = x.size(0), in = x.size(1), out_features = weight.size(0);
  auto out = torch::empty({rows, out_features}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "linear", [&] {
    const scalar_t* x_ptr = x.data_ptr<scalar_t>();
    const scalar_t* w_ptr = weight.data_ptr<scalar_t>();
    const scalar_t* b_ptr = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
    scalar_t* o_ptr = out.data_ptr<scalar_t>();
#if defined(__AVX512BF16__)
    constexpr bool kNativeDot = std::is_same_v<scalar_t, at::BFloat16>;
#else
    constexpr bool kNativeDot = false;
#endif
    if (rows > 1 && !kNativeDot && !std::is_same_v<scalar_t, float>) {
      few_row_linear_converted<scalar_t>(x_ptr, w_ptr, b_ptr, o_ptr, rows, in, out_features);
      return;
    }
    const int64_t num_quads = (out_features + 3) / 4;
    at::parallel_for(0, num_quads, linear_grain(rows, in), [&](int64_t begin, int64_t end) {
      float sums[4];
      for (int64_t quad = begin; quad < end; ++quad) {
        const int64_t n0 = quad * 4;
        const int64_t count = std::min<int64_t>(4, out_features - n0);
        for (int64_t r = 0; r < rows; ++r) {
          const scalar_t* x_row = x_ptr + r * in;
          if (count == 4) {
            dot_four_rows<scalar_t>(x_row, w_ptr + n0 * in, in, sums);
          } else {
            for (int64_t j = 0; j < count; ++j) {
              sums[j] = dot_rows_fixed<scalar_t>(x_row, w_ptr + (n0 + j) * in, in);
            }
          }
          for (int64_t j = 0; j < count; ++j) {
            const float b = b_ptr ? to_float(b_ptr[n0 + j]) : 0.f;
            o_ptr[r * out_features + n0 + j] = static_cast<scalar_t>(sums[j] + b);
          }
        }
      }
    });
  });
  return out;
}

// Defined in cpu_fused.cpp.
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps,
                       c10::optional<torch::Tensor> residual);
void rotary_inplace(torch::Tensor qkv, torch::Tensor positions, torch::Tensor cos,
                    torch::Tensor sin, int64_t num_heads, int64_t head_dim);
torch::Tensor silu_and_mul(torch::Tensor gate_up);
// Defined in cpu_kv_write.cpp.
void write_kv_cache(torch::Tensor key, torch::Tensor value, torch::Tensor key_cache,
                    torch::Tensor value_cache, torch::Tensor slot_mapping);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention, "decode attention over paged KV");
  m.def("few_row_linear", &few_row_linear, "x @ weight.T for few rows");
  m.def("rms_norm", &rms_norm, "RMSNorm, optionally adding a residual in place first");
  m.def("rotary_inplace", &rotary_inplace, "rotary embedding of q and k heads in place");
  m.def("silu_and_mul", &silu_and_mul, "silu(gate) * up");
  m.def("write_kv_cache", &write_kv_cache, "store new tokens' K and V at their slots");
}
