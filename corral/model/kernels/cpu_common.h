// Shared by corral's CPU kernel sources: element conversion and the parallel-work threshold.
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <cstdint>

namespace corral_cpu {


// The least work (multiply-adds) a parallel chunk gets: below it, waking a second thread (tens
// of microseconds with passive OpenMP waits) costs more than it saves. 4M (1 << 22) was measured
// on a 2-core Zen 4 (a 5M multiply-add linear took as long on two threads as on one); on a 2-core
// AVX2 EPYC that limit kept every layer linear of a SmolLM-135M-shaped model on one thread, and
// 512K made one-stream decode 1.4x faster on two threads (docs/performance.md).
constexpr int64_t kMinParallelWork = 1 << 19;

// Weight quads per parallel chunk of a few-row linear: at least 16, and kMinParallelWork.
inline int64_t linear_grain(int64_t rows, int64_t in) {
  return std::max<int64_t>(16, kMinParallelWork / std::max<int64_t>(1, 4 * in * rows));
}

inline float to_float(float x) { return x; }
inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }
inline float to_float(at::Half x) { return static_cast<float>(x); }
inline float to_float(int8_t x) { return static_cast<float>(x); }
inline float to_float(double x) { return static_cast<float>(x); }

}  // namespace corral_cpu
