// Weight-only int8 linear of corral's CPU path (--quantization int8):
//   out[r, n] = x[r] . dequant(qweight)[n] (+ bias[n]),  x [rows, in] float/bfloat16/float16,
//   qweight int8 [out, in], scales float32 [out] (per output channel) or [out, in / group_size].
// Per channel, the scale multiplies a row's whole sum once at the end; with groups, each group's
// partial sum (a vector of lanes) is scaled and added to the row's total. Sums run in float32.
//
// Weight rows are taken four at a time (a quad). With one x row the quad's int8 values are
// converted in registers as they stream by (1 byte per weight read from memory); with several,
// the quad is converted to float once into a per-thread buffer and every x row reuses it. Both
// ways give the dot products the same values in the same order, so a row's result does not
// depend on how many rows share the call (the engine relies on it). Rows are processed in tiles
// of kRowTile so that the tile's float x stays in cache for large prefill chunks.
//
// AVX2/FMA where compiled for it, plain loops otherwise. An AVX-512 VNNI path (int8 x int8 dot
// products after quantizing x) is not written: it would change the numerics, and no machine
// with VNNI was available to test it.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define CORRAL_INT8_AVX2 1
#endif

#include "cpu_common.h"
#include "cpu_ops.h"

using corral_cpu::linear_grain;
using corral_cpu::to_float;

namespace {

// x rows per tile (even, so that row pairs never straddle tiles): 64 rows of 1536 floats (384 KiB) stay in L2 while the quads go by.
constexpr int64_t kRowTile = 64;
// Up to this many rows the quad is converted in registers for each row (no buffer).
constexpr int64_t kDirectRows = 1;

#if defined(CORRAL_INT8_AVX2)
inline __m256 load8(const int8_t* p) {
  const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw));
}
template <typename T>
inline __m256 load8(const T* p) {
  return corral_cpu::load_float8(p);  // float32, bfloat16, float16
}

// The four rows' lanes reduced in a fixed tree (as cpu_linear.cpp's dot_four_rows_avx2).
inline void reduce_four(const __m256* v, float* sums) {
  const __m256 pairs = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  _mm_storeu_ps(sums,
                _mm_add_ps(_mm256_castps256_ps128(pairs), _mm256_extractf128_ps(pairs, 1)));
}

// Lanes of x[begin, end) . w_r[begin, end) for the quad's four rows r: one accumulator per
// row, 8 elements a step. (end - begin) % 8 == 0.
template <typename W>
inline void quad_lanes(const float* x, const W* w, int64_t in, int64_t begin, int64_t end,
                       __m256* acc) {
  for (int r = 0; r < 4; ++r) acc[r] = _mm256_setzero_ps();
  // int8 weights stream from memory once per call (the one-row path): the same offsets of the
  // quad four quads ahead are requested, one 64-byte line per row every 64 elements, as the
  // bf16 GEMV does. No result changes.
  const W* ahead = w + 4 * 4 * in;
  for (int64_t i = begin; i < end; i += 8) {
    if constexpr (std::is_same_v<W, int8_t>) {
      if (((i - begin) & 63) == 0) {
        for (int r = 0; r < 4; ++r) {
          _mm_prefetch(reinterpret_cast<const char*>(ahead + r * in + i), _MM_HINT_T0);
        }
      }
    }
    const __m256 xv = _mm256_loadu_ps(x + i);
    for (int r = 0; r < 4; ++r) acc[r] = _mm256_fmadd_ps(xv, load8(w + r * in + i), acc[r]);
  }
}

// The same for two x rows at once (each weight vector loaded once for both): every lane gets
// exactly the sums quad_lanes gives each row alone.
inline void quad_lanes_two(const float* x0, const float* x1, const float* w, int64_t in,
                           int64_t end, __m256* acc0, __m256* acc1) {
  for (int r = 0; r < 4; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  for (int64_t i = 0; i < end; i += 8) {
    const __m256 a = _mm256_loadu_ps(x0 + i);
    const __m256 b = _mm256_loadu_ps(x1 + i);
    for (int r = 0; r < 4; ++r) {
      const __m256 wv = _mm256_loadu_ps(w + r * in + i);
      acc0[r] = _mm256_fmadd_ps(a, wv, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(b, wv, acc1[r]);
    }
  }
}

// Per channel: reduce the lanes, add the scalar tail [body, in), scale once.
template <typename W>
inline void finish_channel(const __m256* lanes, const float* x, const W* w, int64_t in,
                           int64_t body, const float* scales, float* sums) {
  reduce_four(lanes, sums);
  for (int r = 0; r < 4; ++r) {
    float sum = sums[r];
    for (int64_t j = body; j < in; ++j) sum += x[j] * to_float(w[r * in + j]);
    sums[r] = sum * scales[r];
  }
}

// sums[r] = x . dequant(w_r) for the quad (scales of row r at scales[r * groups]).
template <typename W>
inline void dot_four(const float* x, const W* w, int64_t in, const float* scales,
                     int64_t groups, float* sums) {
  __m256 lanes[4];
  if (groups == 1) {
    const int64_t body = in / 8 * 8;
    quad_lanes(x, w, in, 0, body, lanes);
    finish_channel(lanes, x, w, in, body, scales, sums);
    return;
  }
  const int64_t group_size = in / groups;
  __m256 total[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
  for (int64_t g = 0; g < groups; ++g) {
    quad_lanes(x, w, in, g * group_size, (g + 1) * group_size, lanes);
    for (int r = 0; r < 4; ++r) {
      total[r] = _mm256_fmadd_ps(lanes[r], _mm256_set1_ps(scales[r * groups + g]), total[r]);
    }
  }
  reduce_four(total, sums);
}

// dot_four for two x rows against a converted quad, per-channel scales only.
inline void dot_four_two(const float* x0, const float* x1, const float* w, int64_t in,
                         const float* scales, float* sums0, float* sums1) {
  __m256 lanes0[4], lanes1[4];
  const int64_t body = in / 8 * 8;
  quad_lanes_two(x0, x1, w, in, body, lanes0, lanes1);
  finish_channel(lanes0, x0, w, in, body, scales, sums0);
  finish_channel(lanes1, x1, w, in, body, scales, sums1);
}
#define CORRAL_INT8_TWO_ROWS 1
#else
// The portable loops: 16 explicit lanes per row, reduced in order.
template <typename W>
inline void quad_lanes(const float* x, const W* w, int64_t in, int64_t begin, int64_t end,
                       float (*acc)[16]) {
  for (int r = 0; r < 4; ++r) std::fill(acc[r], acc[r] + 16, 0.f);
  for (int64_t i = begin; i < end; i += 16) {
    for (int r = 0; r < 4; ++r) {
      for (int l = 0; l < 16; ++l) acc[r][l] += x[i + l] * to_float(w[r * in + i + l]);
    }
  }
}

template <typename W>
inline void dot_four(const float* x, const W* w, int64_t in, const float* scales,
                     int64_t groups, float* sums) {
  float acc[4][16];
  if (groups == 1) {
    const int64_t body = in / 16 * 16;
    quad_lanes(x, w, in, 0, body, acc);
    for (int r = 0; r < 4; ++r) {
      float sum = 0.f;
      for (int l = 0; l < 16; ++l) sum += acc[r][l];
      for (int64_t j = body; j < in; ++j) sum += x[j] * to_float(w[r * in + j]);
      sums[r] = sum * scales[r];
    }
    return;
  }
  const int64_t group_size = in / groups;
  for (int r = 0; r < 4; ++r) sums[r] = 0.f;
  for (int64_t g = 0; g < groups; ++g) {
    quad_lanes(x, w, in, g * group_size, (g + 1) * group_size, acc);
    for (int r = 0; r < 4; ++r) {
      float sum = 0.f;
      for (int l = 0; l < 16; ++l) sum += acc[r][l];
      sums[r] += sum * scales[r * groups + g];
    }
  }
}
#endif

// dst[i] = float(src[i]) for i < n, eight at a time where AVX2 is there.
template <typename T>
inline void convert_to_float(const T* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(CORRAL_INT8_AVX2)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8(src + i));
#endif
  for (; i < n; ++i) dst[i] = to_float(src[i]);
}

template <typename T>
void int8_linear_rows(const T* x_ptr, const int8_t* q_ptr, const float* s_ptr, int64_t groups,
                      const T* b_ptr, T* o_ptr, int64_t rows, int64_t in, int64_t out_features) {
  const float* x_float = nullptr;
  std::vector<float> x_buffer;
  if constexpr (std::is_same_v<T, float>) {
    x_float = x_ptr;
  } else {
    x_buffer.resize(rows * in);
    convert_to_float(x_ptr, x_buffer.data(), rows * in);
    x_float = x_buffer.data();
  }
  const int64_t num_quads = (out_features + 3) / 4;
  at::parallel_for(0, num_quads, linear_grain(rows, in), [&](int64_t begin, int64_t end) {
    std::vector<float> w_float;
    std::vector<float> padded_scales(4 * groups);
    float sums[4];
    for (int64_t row0 = 0; row0 < rows; row0 += kRowTile) {
      const int64_t row_end = std::min(rows, row0 + kRowTile);
      for (int64_t quad = begin; quad < end; ++quad) {
        const int64_t n0 = quad * 4;
        const int64_t count = std::min<int64_t>(4, out_features - n0);
        const int8_t* w_quad = q_ptr + n0 * in;
        const float* scales = s_ptr + n0 * groups;
        const bool direct = count == 4 && rows <= kDirectRows;
        if (!direct) {  // convert once (zero rows past the end), every x row reuses it
          w_float.resize(4 * in);
          convert_to_float(w_quad, w_float.data(), count * in);
          std::fill(w_float.begin() + count * in, w_float.end(), 0.f);
          if (count < 4) {
            std::fill(padded_scales.begin(), padded_scales.end(), 0.f);
            std::memcpy(padded_scales.data(), scales, count * groups * sizeof(float));
            scales = padded_scales.data();
          }
        }
        const auto store = [&](int64_t r, const float* row_sums) {
          for (int64_t j = 0; j < count; ++j) {
            const float b = b_ptr ? to_float(b_ptr[n0 + j]) : 0.f;
            o_ptr[r * out_features + n0 + j] = static_cast<T>(row_sums[j] + b);
          }
        };
        int64_t r = row0;
#if defined(CORRAL_INT8_TWO_ROWS)
        if (!direct && groups == 1) {  // two rows at a time share each weight load
          float sums1[4];
          for (; r + 2 <= row_end; r += 2) {
            dot_four_two(x_float + r * in, x_float + (r + 1) * in, w_float.data(), in, scales,
                         sums, sums1);
            store(r, sums);
            store(r + 1, sums1);
          }
        }
#endif
        for (; r < row_end; ++r) {
          const float* x_row = x_float + r * in;
          if (direct) {
            dot_four<int8_t>(x_row, w_quad, in, scales, groups, sums);
          } else {
            dot_four<float>(x_row, w_float.data(), in, scales, groups, sums);
          }
          store(r, sums);
        }
      }
    }
  });
}

}  // namespace

// x [rows, in] @ dequant(qweight [out, in], scales)^T (+ bias) -> [rows, out] in x's dtype.
// A 3-D qweight is packed in panels (cpu_int8_panel.cpp).
torch::Tensor int8_linear(torch::Tensor x, torch::Tensor qweight, torch::Tensor scales,
                          c10::optional<torch::Tensor> bias) {
  if (qweight.dim() == 3) return int8_panel_linear(x, qweight, scales, bias);
  TORCH_CHECK(x.dim() == 2 && qweight.dim() == 2, "x and qweight must be 2-D");
  TORCH_CHECK(x.is_contiguous() && qweight.is_contiguous() && scales.is_contiguous(),
              "x, qweight and scales must be contiguous");
  TORCH_CHECK(qweight.scalar_type() == at::kChar, "qweight must be int8");
  TORCH_CHECK(scales.scalar_type() == at::kFloat, "scales must be float32");
  const int64_t rows = x.size(0), in = x.size(1), out_features = qweight.size(0);
  TORCH_CHECK(qweight.size(1) == in, "x has ", in, " columns, qweight ", qweight.size(1));
  const int64_t groups = scales.dim() == 2 ? scales.size(1) : 1;
  TORCH_CHECK(scales.size(0) == out_features && scales.dim() <= 2, "scales must be [out] or "
              "[out, groups]");
  TORCH_CHECK(groups == 1 || (in % groups == 0 && (in / groups) % 16 == 0),
              "group size must divide in and be a multiple of 16");
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->numel() == out_features &&
                    bias->is_contiguous(),
                "bias must be contiguous [out] in x's dtype");
  }
  auto out = torch::empty({rows, out_features}, x.options());
  const int8_t* q_ptr = qweight.data_ptr<int8_t>();
  const float* s_ptr = scales.data_ptr<float>();
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    int8_linear_rows<T>(x.data_ptr<T>(), q_ptr, s_ptr, groups,
                        bias.has_value() ? bias->data_ptr<T>() : nullptr, out.data_ptr<T>(), rows,
                        in, out_features);
  };
  switch (x.scalar_type()) {
    case at::kFloat: run(float{}); break;
    case at::kBFloat16: run(at::BFloat16{}); break;
    case at::kHalf: run(at::Half{}); break;
    default: TORCH_CHECK(false, "int8_linear: x must be float32, bfloat16 or float16");
  }
  return out;
}
