// The few-row linear of corral's CPU decode path: x [rows, in] @ weight[out, in]^T for the row
// counts of decode and verification steps, with a row's result independent of the row count.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX512BF16__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#include "cpu_common.h"
#include "cpu_ops.h"

using corral_cpu::linear_grain;
using corral_cpu::to_float;

namespace {

template <typename T>
inline void convert_to_float(const T* src, float* dst, int64_t n);

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
inline __m256 load_eight(const at::BFloat16* p) { return corral_cpu::load_bf16x8(p); }
inline __m256 load_eight(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Two accumulators per weight row (eight independent FMA chains), 16 elements a step; the lanes
// are then added in a fixed order, so float, bfloat16 and float16 inputs of equal values give
// equal bits (the few-row path converts to float first; the one-row path does not).
//
// kPrefetch (the one-row bf16 path, which streams every weight from memory once): the same
// offsets of the quad kPrefetchQuads quads ahead are requested while this one is multiplied,
// as the AVX-512 path does. It changes no result.
template <typename T, bool kPrefetch = false>
inline void dot_four_rows_avx2(const T* x, const T* w, int64_t in, float* sums) {
  __m256 acc[4][2];
  for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  constexpr int64_t kPrefetchQuads = 4;
  const T* ahead = w + kPrefetchQuads * 4 * in;
  int64_t i = 0;
  for (; i + 16 <= in; i += 16) {
    const __m256 x0 = load_eight(x + i);
    const __m256 x1 = load_eight(x + i + 8);
    if constexpr (kPrefetch) {
      // 16 bf16 elements are 32 bytes: one 64-byte line covers two iterations of a row.
      if ((i & 31) == 0) {
        for (int r = 0; r < 4; ++r) {
          _mm_prefetch(reinterpret_cast<const char*>(ahead + r * in + i), _MM_HINT_T0);
        }
      }
    }
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

// The register-blocked form of dot_four_rows_avx2 for kTileRows x rows at once: each loaded
// weight vector serves both rows and each x vector four weight rows (8 accumulators, 8 FMAs per
// 6 loads instead of 8 per 10; with three rows GCC ran out of the 16 ymm registers and reloaded
// every operand), so batched steps are bound by the FMA units rather than the load ports. The sums are formed in exactly dot_four_rows_avx2's order: the 8-element blocks
// at even offsets (i, i + 16, ...) into one chain and the odd ones (i + 8, ...) into another,
// computed here as two passes over k, then added, reduced by the same tree, then the scalar
// tail. So a row's result is the same bits in a tile or alone (batch invariance).
constexpr int64_t kTileRows = 3;

// An empty asm that claims to change v: GCC then keeps a loaded vector in a register instead of
// folding the load into each FMA that uses it (which doubled the loads of the tile's loop).
inline void keep_in_register(__m256& v) { asm volatile("" : "+x"(v)); }

// One pass (offset 0: the even 8-element blocks, 8: the odd ones) over the columns [begin, end)
// (multiples of 16), into acc: the chains start at zero, or with kContinue go on from acc.
template <bool kContinue>
inline void tile_pass(const float* x, int64_t x_stride, const float* w, int64_t in,
                      int64_t begin, int64_t end, int64_t offset, __m256 acc[kTileRows][4]) {
  __m256 a[kTileRows][4];
  for (int r = 0; r < kTileRows; ++r) {
    for (int j = 0; j < 4; ++j) a[r][j] = kContinue ? acc[r][j] : _mm256_setzero_ps();
  }
  for (int64_t i = begin + offset; i + 16 - offset <= end; i += 16) {
    __m256 xr[kTileRows];
    for (int r = 0; r < kTileRows; ++r) {
      xr[r] = _mm256_loadu_ps(x + r * x_stride + i);
      keep_in_register(xr[r]);
    }
    for (int j = 0; j < 4; ++j) {
      __m256 wj = _mm256_loadu_ps(w + j * in + i);
      keep_in_register(wj);
      for (int r = 0; r < kTileRows; ++r) a[r][j] = _mm256_fmadd_ps(xr[r], wj, a[r][j]);
    }
  }
  for (int r = 0; r < kTileRows; ++r) {
    for (int j = 0; j < 4; ++j) acc[r][j] = a[r][j];
  }
}

constexpr int64_t kTileColumns = 512;
constexpr int64_t kMaxUnblockedColumns = 1024;

// sums[r][j] = x[r] . w[j] for kTileRows rows of x (row stride x_stride) and four weight rows.
inline void dot_tile_rows(const float* x, int64_t x_stride, const float* w, int64_t in,
                          float sums[kTileRows][4]) {
  __m256 even[kTileRows][4];
  __m256 odd[kTileRows][4];
  const int64_t tail = in - in % 16;
  // Rows longer than kMaxUnblockedColumns go kTileColumns at a time, both passes of a block
  // before the next: each chain still adds its products in one pass's order (the same bits),
  // and the block of the quad and the tile's rows stays in L1 for the second pass (whole rows
  // of 1536 outgrew it: 32-row steps ran at 60% of the speed of 576-wide ones; blocks gave
  // 1.2x there). Shorter rows take one pass each, as before (splitting them cost 5-15%).
  if (tail <= kMaxUnblockedColumns) {
    tile_pass<false>(x, x_stride, w, in, 0, tail, 0, even);
    tile_pass<false>(x, x_stride, w, in, 0, tail, 8, odd);
  } else {
    tile_pass<false>(x, x_stride, w, in, 0, kTileColumns, 0, even);
    tile_pass<false>(x, x_stride, w, in, 0, kTileColumns, 8, odd);
    for (int64_t begin = kTileColumns; begin < tail; begin += kTileColumns) {
      const int64_t end = std::min(tail, begin + kTileColumns);
      tile_pass<true>(x, x_stride, w, in, begin, end, 0, even);
      tile_pass<true>(x, x_stride, w, in, begin, end, 8, odd);
    }
  }
  for (int r = 0; r < kTileRows; ++r) {
    __m256 row[4];
    for (int j = 0; j < 4; ++j) row[j] = _mm256_add_ps(even[r][j], odd[r][j]);
    const __m256 pairs =
        _mm256_hadd_ps(_mm256_hadd_ps(row[0], row[1]), _mm256_hadd_ps(row[2], row[3]));
    const __m128 quad =
        _mm_add_ps(_mm256_castps256_ps128(pairs), _mm256_extractf128_ps(pairs, 1));
    _mm_storeu_ps(sums[r], quad);
    if (tail < in) {
      const float* x_row = x + r * x_stride;
      for (int j = 0; j < 4; ++j) {
        float sum = sums[r][j];
        for (int64_t k = tail; k < in; ++k) sum += to_float(x_row[k]) * to_float(w[j * in + k]);
        sums[r][j] = sum;
      }
    }
  }
}
#define CORRAL_HAVE_TILE_ROWS 1
template <>
inline void dot_four_rows<at::Half>(const at::Half* x, const at::Half* w, int64_t in,
                                    float* sums) {
  dot_four_rows_avx2(x, w, in, sums);
}
#if !defined(__AVX512BF16__)
template <>
inline void dot_four_rows<at::BFloat16>(const at::BFloat16* x, const at::BFloat16* w, int64_t in,
                                        float* sums) {
  dot_four_rows_avx2<at::BFloat16, true>(x, w, in, sums);
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

// out[r, n0 + j] = x[r] . w[j] (+ bias) for every row r of float x and the (up to) four float
// weight rows w of one quad: kTileRows rows at a time where the tile kernel is built, the
// remaining rows one at a time, with equal bits either way.
template <typename T>
inline void rows_times_quad(const float* x, const float* w, const T* b_ptr, T* o_ptr,
                            int64_t rows, int64_t in, int64_t out_features, int64_t n0,
                            int64_t count) {
  float sums[4];
  const auto store = [&](int64_t r, const float* row_sums) {
    for (int64_t j = 0; j < count; ++j) {
      const float b = b_ptr ? to_float(b_ptr[n0 + j]) : 0.f;
      o_ptr[r * out_features + n0 + j] = static_cast<T>(row_sums[j] + b);
    }
  };
  int64_t r = 0;
#if defined(CORRAL_HAVE_TILE_ROWS)
  if (count == 4) {
    float tile_sums[kTileRows][4];
    for (; r + kTileRows <= rows; r += kTileRows) {
      dot_tile_rows(x + r * in, in, w, in, tile_sums);
      for (int64_t t = 0; t < kTileRows; ++t) store(r + t, tile_sums[t]);
    }
  }
#endif
  for (; r < rows; ++r) {
    const float* x_row = x + r * in;
    if (count == 4) {
      dot_four_rows<float>(x_row, w, in, sums);
    } else {
      for (int64_t j = 0; j < count; ++j) sums[j] = dot_rows_fixed<float>(x_row, w + j * in, in);
    }
    store(r, sums);
  }
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
    for (int64_t quad = begin; quad < end; ++quad) {
      const int64_t n0 = quad * 4;
      const int64_t count = std::min<int64_t>(4, out_features - n0);
      const T* w_quad = w_ptr + n0 * in;
      convert_to_float(w_quad, w_float.data(), count * in);
      rows_times_quad<T>(x_float.data(), w_float.data(), b_ptr, o_ptr, rows, in, out_features,
                         n0, count);
    }
  });
}

}  // namespace

// silu(gate) * up of x's gate/up projection (weight [2 * intermediate, in], gate rows first):
// one pass over tiles (amx_linear_silu, or dot_tiles_linear_silu without AMX), else
// few_row_linear then silu_and_mul; the same bits.
torch::Tensor few_row_linear_silu(torch::Tensor x, torch::Tensor weight,
                                  c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), "x and weight must be contiguous");
  if (weight.dim() == 5) {
    return amx_tiles_supported() ? amx_linear_silu(x, weight, bias)
                                 : dot_tiles_linear_silu(x, weight, bias);
  }
  return silu_and_mul(few_row_linear(x, weight, bias));
}

// x [rows, in] @ weight[out, in]^T (+ bias), for few rows: each weight row is read once. A 3-D
// weight is a packed bf16 one ([out / 64, in, 64], panel_linear in cpu_panel_linear.cpp), a 5-D
// one bf16 tiles ([out / 16, in / 32, 16, 16, 2]: amx_linear in cpu_amx_linear.cpp where the
// process may use AMX, else dot_tiles_linear in cpu_dot_tiles.cpp).
torch::Tensor few_row_linear(torch::Tensor x, torch::Tensor weight,
                             c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), "x and weight must be contiguous");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "x and weight dtypes differ");
  const int64_t rows = x.size(0), in = x.size(1);
  if (weight.dim() == 3) return panel_linear(x, weight, bias);
  if (weight.dim() == 5) {
    return amx_tiles_supported() ? amx_linear(x, weight, bias) : dot_tiles_linear(x, weight, bias);
  }
  const int64_t out_features = weight.size(0);
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
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (rows > 1) {
        const int64_t num_quads = (out_features + 3) / 4;
        at::parallel_for(0, num_quads, linear_grain(rows, in), [&](int64_t begin, int64_t end) {
          for (int64_t quad = begin; quad < end; ++quad) {
            const int64_t n0 = quad * 4;
            // Only reached with scalar_t = float (the casts are no-ops there); the branch is
            // compiled, not discarded, for the other types of the dispatch.
            rows_times_quad<float>(reinterpret_cast<const float*>(x_ptr),
                                   reinterpret_cast<const float*>(w_ptr) + n0 * in,
                                   reinterpret_cast<const float*>(b_ptr),
                                   reinterpret_cast<float*>(o_ptr), rows, in, out_features, n0,
                                   std::min<int64_t>(4, out_features - n0));
          }
        });
        return;
      }
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

