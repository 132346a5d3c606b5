// Shared by corral's CPU kernel sources: element conversion and the parallel-work threshold.
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if (defined(__AVX2__) && defined(__FMA__)) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace corral_cpu {


// The least work (multiply-adds) a parallel chunk gets: below it, waking a second thread costs
// more than it saves. With passive OpenMP waits (a wake-up costs tens of microseconds) 4M
// (1 << 22) was measured on a 2-core Zen 4 and 512K (1 << 19) on a 2-core AVX2 EPYC (one-stream
// decode 1.4x faster on two threads than with 4M). Where threads spin between calls (libgomp's
// default policy), 256K made the demo target's one-row decoder stack and head 1.13-1.16x faster;
// under passive waits, 0.57x: corral/model/kernels/__init__.py sets it by the wait policy at load
// (set_min_parallel_work), and this is the passive value. docs/performance.md.
constexpr int64_t kPassiveMinParallelWork = 1 << 19;
inline int64_t& min_parallel_work() {
  static int64_t value = kPassiveMinParallelWork;
  return value;
}

// Weight quads per parallel chunk of a few-row linear: at least 16, and min_parallel_work().
inline int64_t linear_grain(int64_t rows, int64_t in) {
  return std::max<int64_t>(16, min_parallel_work() / std::max<int64_t>(1, 4 * in * rows));
}

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

#if defined(__AVX512F__)
// fast_exp in sixteen lanes, the same operations per lane (the prefill attention kernel's
// softmax as OpenMP simd loops over the scalar form and a max reduction took 1.33x as long).
inline __m512 fast_exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  const __m512 round = _mm512_set1_ps(12582912.f);
  const __m512 n = _mm512_sub_ps(_mm512_add_ps(t, round), round);
  const __m512 r = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.6931471805599453f));
  __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(1.f / 720), _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.f));
  const __m512i bits =
      _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}
#endif

#if defined(__AVX512F__)
// bf16_bits (below), sixteen lanes: nearest even, NaN to 0x7FC0.
inline __m512i bf16_bits16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(
      _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  const __mmask16 is_nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_blend_epi32(is_nan, rounded, _mm512_set1_epi32(0x7FC0));
}
// e^x to about one float ulp (Cephes' expf polynomial after a two-part ln 2 reduction), x
// clamped to [-87, 88]; the same operations per lane as cpu_fused.cpp's eight-lane exp8.
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.f)), _mm512_set1_ps(88.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.f));
  const __m512i scale =
      _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(scale));
}
// x / (1 + e^-x) in float32: the SiLU of silu_and_mul (cpu_fused.cpp) and of the AMX linear's
// fused gate/up epilogue (cpu_amx_linear.cpp), one form so that both give the same bits.
inline __m512 silu16(__m512 x) {
  const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
  return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.f), e));
}
#endif

inline float to_float(float x) { return x; }
inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }
inline float to_float(at::Half x) { return static_cast<float>(x); }
inline float to_float(int8_t x) { return static_cast<float>(x); }
inline float to_float(double x) { return static_cast<float>(x); }

#if defined(__AVX2__) && defined(__FMA__)
// Eight bfloat16 values as floats (exact: the bits shifted into the high half).
inline __m256 load_bf16x8(const at::BFloat16* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
// The bfloat16 bits of each lane, in the low half of a 32-bit word, rounded as c10 rounds
// (nearest even; NaN to the quiet NaN 0x7FC0), so a lane holds what a scalar cast would.
inline __m256i bf16_bits(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(
      _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256 is_nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  return _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(is_nan));
}
// dst[i] = float(src[i]) for i < n, eight at a time.
inline void bf16_to_float(const at::BFloat16* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_bf16x8(src + i));
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}
inline void store_bf16x8(at::BFloat16* p, __m256 v) {
  const __m256i bits = bf16_bits(v);
  const __m128i packed =
      _mm_packus_epi32(_mm256_castsi256_si128(bits), _mm256_extracti128_si256(bits, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}
#if defined(__F16C__)
// Eight float32, bfloat16 or float16 elements as floats, and back (rounded to nearest).
inline __m256 load_float8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load_float8(const at::BFloat16* p) { return load_bf16x8(p); }
inline __m256 load_float8(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline void store_float8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void store_float8(at::BFloat16* p, __m256 v) { store_bf16x8(p, v); }
inline void store_float8(at::Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
#endif
#endif

#if defined(__AVX512F__)
// Sixteen float32, bfloat16 or float16 elements as floats (bfloat16 exact: the bits shifted into
// the high half), the sixteen-lane load_float8.
inline __m512 load_float16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load_float16(const at::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
inline __m512 load_float16(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
#endif

#if defined(__AVX512BF16__)
// The row epilogue of the tiled bf16 linears (cpu_amx_linear.cpp, cpu_dot_tiles.cpp), one form
// so that both store the same bits from the same sums.
// A bias block of 16 outputs as float32 lanes (zeros without a bias).
inline __m512 bias16(const at::BFloat16* bias, int64_t n) {
  if (bias == nullptr) return _mm512_setzero_ps();
  return load_float16(bias + n);
}
// A float32 lane rounded to bf16 (nearest even) and back: what a bf16 output holds.
inline __m512 round_bf16(__m512 v) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)), 16));
}
// 16 outputs: sums + bias, rounded to bf16 once.
inline void store_tiled16(at::BFloat16* o, __m512 sums, __m512 bias) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o),
                      (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(sums, bias)));
}
// 16 outputs of silu(gate) * up, gate and up first rounded to bf16 as a plain call would store
// them, then silu_and_mul's own lanes (silu16, rounding as c10): the bits of the two calls.
inline void store_silu_tiled16(at::BFloat16* o, __m512 gate, __m512 gate_bias, __m512 up,
                               __m512 up_bias) {
  const __m512 up_bf16 = round_bf16(_mm512_add_ps(up, up_bias));
  const __m512 activated = round_bf16(silu16(round_bf16(_mm512_add_ps(gate, gate_bias))));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o),
                      _mm512_cvtepi32_epi16(bf16_bits16(_mm512_mul_ps(activated, up_bf16))));
}
#endif

}  // namespace corral_cpu
