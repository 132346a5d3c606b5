// Greedy decoding's argmax over each row of logits [rows, vocab] (float32, or bfloat16 read as the
// float32 values a .float() copy would hold), as torch's argmax chooses: the first index of the row's largest value, or of its first NaN where it has one.
// torch's own took 1.0 ms at [32, 49152] on 2 threads of an AMX Xeon (its max 0.4 ms): 3.5% of
// a 32-request decode round there (docs/performance.md). Two passes over each row (the largest
// value, then the first index holding it), rows in parallel.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu_common.h"
#include "cpu_ops.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

using corral_cpu::to_float;

#if defined(__AVX512F__)
using corral_cpu::load_float16;
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
using corral_cpu::load_float8;
#endif

template <typename T>
int64_t row_argmax(const T* v, int64_t n) {
  float largest = -std::numeric_limits<float>::infinity();
  bool has_nan = false;
  int64_t k = 0;
#if defined(__AVX512F__)
  __m512 best = _mm512_set1_ps(largest);
  __mmask16 unordered = 0;
  for (; k + 16 <= n; k += 16) {
    const __m512 x = load_float16(v + k);
    unordered |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    best = _mm512_max_ps(x, best);
  }
  largest = _mm512_reduce_max_ps(best);
  has_nan = unordered != 0;
#elif defined(__AVX2__)
  __m256 best = _mm256_set1_ps(largest);
  int unordered = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256 x = load_float8(v + k);
    unordered |= _mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    best = _mm256_max_ps(x, best);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, best);
  for (float lane : lanes) largest = std::max(largest, lane);
  has_nan = unordered != 0;
#endif
  for (; k < n; ++k) {
    const float x = to_float(v[k]);
    has_nan |= std::isnan(x);
    if (x > largest) largest = x;
  }
  if (has_nan) {
    for (int64_t i = 0; i < n; ++i) {
      if (std::isnan(to_float(v[i]))) return i;
    }
  }
  k = 0;
#if defined(__AVX512F__)
  const __m512 target = _mm512_set1_ps(largest);
  for (; k + 16 <= n; k += 16) {
    const __mmask16 equal = _mm512_cmp_ps_mask(load_float16(v + k), target, _CMP_EQ_OQ);
    if (equal != 0) return k + __builtin_ctz(equal);
  }
#endif
  for (; k < n; ++k) {
    if (to_float(v[k]) == largest) return k;
  }
  return 0;  // unreachable for n > 0: largest is one of the row's values
}

}  // namespace

torch::Tensor argmax_rows(const torch::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) > 0 &&
                  (logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16),
              "argmax_rows: float32 or bfloat16 logits [rows, vocab] with vocab > 0");
  const auto values = logits.contiguous();
  const int64_t rows = values.size(0), vocab = values.size(1);
  auto out = torch::empty({rows}, logits.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  const int64_t grain =
      std::max<int64_t>(1, corral_cpu::min_parallel_work() / std::max<int64_t>(1, 4 * vocab));
  const auto run = [&](const auto* v) {
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) o[r] = row_argmax(v + r * vocab, vocab);
    });
  };
  if (values.scalar_type() == at::kFloat) {
    run(values.data_ptr<float>());
  } else {
    run(values.data_ptr<at::BFloat16>());
  }
  return out;
}
