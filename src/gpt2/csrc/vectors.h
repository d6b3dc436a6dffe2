// What the elementwise kernels in csrc/ share: a vector of L floats (or 32-bit integers, or bfloat16 bits) in
// GCC/Clang's vector extension, so that the sources stay free of per-ISA intrinsics where the compiler does well.
// L is the CPU's own width: 16 with AVX-512, 8 with AVX2, 4 elsewhere (NEON, SSE). Wider vectors than the CPU's
// compile to slow code: GCC 12 turned a 16-float compare or select on an AVX2 CPU into 16 scalar ones, which
// made GPT-2's GELU 3x slower there (8.0 against 2.5 ms forward for 1024 x 3072 float32 values on a 2-core Zen 3).
// Also their loads and stores in float32 and bfloat16, and exp: what the elementwise work of cross_entropy.cpp,
// gelu.cpp and attention.cpp is made of.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>
#include <utility>

namespace {
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "bfloat16 is read as the top half of a float32");

#if defined(__AVX512F__)
constexpr int64_t L = 16;
#elif defined(__AVX2__)
constexpr int64_t L = 8;
#else
constexpr int64_t L = 4;
#endif
typedef float vf __attribute__((vector_size(4 * L)));
typedef int32_t vi __attribute__((vector_size(4 * L)));
typedef uint32_t vu __attribute__((vector_size(4 * L)));
typedef uint16_t vh __attribute__((vector_size(2 * L)));  // bfloat16 bits

// The same bits as another type of the same size (a bfloat16's bits shifted into a float32's top half, say).
template <typename To, typename From>
inline To bits(From v) {
  static_assert(sizeof(To) == sizeof(From));
  To t;
  std::memcpy(&t, &v, sizeof t);
  return t;
}

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline vf splat(float f) { return vf{} + f; }
template <std::size_t... I>
inline vf iota(std::index_sequence<I...>) {
  return vf{static_cast<float>(I)...};
}
inline vf iota() { return iota(std::make_index_sequence<L>()); }  // 0, 1, ..., L - 1
inline float hsum(vf v) {
  float s = 0.f;
  for (int k = 0; k < L; ++k) s += v[k];
  return s;
}
inline float hmax(vf v) {
  float m = v[0];
  for (int k = 1; k < L; ++k) m = v[k] > m ? v[k] : m;
  return m;
}

// Loads and stores of L elements, float32 or bfloat16 (bfloat16 is float32's top half: widening is a shift).
inline vf load(const c10::BFloat16* p) {
  vh h;
  std::memcpy(&h, p, sizeof h);
  return bits<vf>(__builtin_convertvector(h, vu) << 16);
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
// v rounded to bfloat16 (its bits): to nearest even, as c10::BFloat16 does; NaN becomes the quiet NaN 0x7fc0
// (rounding could make it inf)
inline vh to_bf16(vf v) {
  const vu b = bits<vu>(v);
  const vu rounded = (b + (((b >> 16) & 1u) + 0x7fffu)) >> 16;
  const vu out = (v != v) ? vu{} + 0x7fc0u : rounded;
  return __builtin_convertvector(out, vh);
}
inline void store(c10::BFloat16* p, vf v) {
  const vh h = to_bf16(v);
  std::memcpy(p, &h, sizeof h);
}

// The first n < L elements, the rest `fill`; and their store. Tails go through the same vector code as the
// body, so that every element of a row is computed alike.
template <typename T>
inline vf load_part(const T* p, int64_t n, float fill) {
  T tmp[L];
  for (int64_t k = 0; k < L; ++k) tmp[k] = k < n ? p[k] : static_cast<T>(fill);
  return load(tmp);
}
template <typename T>
inline void store_part(T* p, vf v, int64_t n) {
  T tmp[L];
  store(tmp, v);
  for (int64_t k = 0; k < n; ++k) p[k] = tmp[k];
}

// exp(x) for x <= 0 (the loss's x - max, GELU's -|z|, attention's S * scale - lse), after Cephes' expf:
// x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-6 polynomial (relative error about 2e-7, as exact as
// float32's own rounding allows up to an ulp or two), times 2^n.
// x is clamped at -104, below which exp rounds to 0 in float32; 2^n is applied as two factors 2^(n/2) so that
// results down to the subnormals come out right (and not as garbage exponent bits). NaN stays NaN.
inline vf vexp(vf x) {
  const vf lo = splat(-104.f);
  x = (x < lo) ? lo : x;
  const vf magic = splat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer, in the low mantissa bits
  const vf t = x * 1.44269504088896341f + magic;
  const vf n = t - magic;
  const vi ni = bits<vi>(t) - bits<vi>(magic);
  vf r = x - n * 0.693359375f;  // ln 2 in two parts: the first exact in float32, so n * it is exact
  r = r - n * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.f;
  const vi n1 = ni >> 1, n2 = ni - n1;  // each in [-75, 0]: normal powers of two
  return p * bits<vf>((n1 + 127) << 23) * bits<vf>((n2 + 127) << 23);
}
}  // namespace
