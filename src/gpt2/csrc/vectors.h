// What the kernels in csrc/ share: 16 floats (or 16 32-bit integers) as one vector value, with GCC/Clang's
// vector extension, so that the sources stay free of per-ISA intrinsics where the compiler does well: one
// AVX-512 register where the CPU has them, two AVX2 or four NEON registers elsewhere. Also their loads and stores
// in float32 and bfloat16, and exp: what the elementwise work of cross_entropy.cpp, gelu.cpp and attention.cpp is
// made of.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

namespace {
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "bfloat16 is read as the top half of a float32");

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
constexpr int64_t L = 16;

// The same bits as another type of the same size (a bfloat16's bits shifted into a float32's top half, say).
template <typename To, typename From>
inline To bits(From v) {
  static_assert(sizeof(To) == sizeof(From));
  To t;
  std::memcpy(&t, &v, sizeof t);
  return t;
}

inline v16 load(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline v16 splat(float f) { return v16{} + f; }
inline float hsum(v16 v) {
  float s = 0.f;
  for (int k = 0; k < L; ++k) s += v[k];
  return s;
}

// Loads and stores of 16 elements, float32 or bfloat16 (bfloat16 is float32's top half: widening is a shift).
inline v16 load(const c10::BFloat16* p) {
  u16x16 h;
  std::memcpy(&h, p, sizeof h);
  return bits<v16>(__builtin_convertvector(h, u32x16) << 16);
}
inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
// v rounded to bfloat16 (its bits): to nearest even, as c10::BFloat16 does; NaN becomes the quiet NaN 0x7fc0
// (rounding could make it inf)
inline u16x16 to_bf16(v16 v) {
  const u32x16 b = bits<u32x16>(v);
  const u32x16 rounded = (b + (((b >> 16) & 1u) + 0x7fffu)) >> 16;
  const u32x16 out = (v != v) ? u32x16{} + 0x7fc0u : rounded;
  return __builtin_convertvector(out, u16x16);
}
inline void store(c10::BFloat16* p, v16 v) {
  const u16x16 h = to_bf16(v);
  std::memcpy(p, &h, sizeof h);
}

// The first n < 16 elements, the rest `fill`; and their store. Tails go through the same vector code as the
// body, so that every element of a row is computed alike.
template <typename T>
inline v16 load_part(const T* p, int64_t n, float fill) {
  T tmp[L];
  for (int64_t k = 0; k < L; ++k) tmp[k] = k < n ? p[k] : static_cast<T>(fill);
  return load(tmp);
}
template <typename T>
inline void store_part(T* p, v16 v, int64_t n) {
  T tmp[L];
  store(tmp, v);
  for (int64_t k = 0; k < n; ++k) p[k] = tmp[k];
}

// exp(x) for x <= 0 (the loss's x - max, GELU's -|z|, attention's S * scale - lse), after Cephes' expf:
// x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-6 polynomial (relative error about 2e-7, as exact as
// float32's own rounding allows up to an ulp or two), times 2^n.
// x is clamped at -104, below which exp rounds to 0 in float32; 2^n is applied as two factors 2^(n/2) so that
// results down to the subnormals come out right (and not as garbage exponent bits). NaN stays NaN.
inline v16 vexp(v16 x) {
  const v16 lo = splat(-104.f);
  x = (x < lo) ? lo : x;
  const v16 magic = splat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer, in the low mantissa bits
  const v16 t = x * 1.44269504088896341f + magic;
  const v16 n = t - magic;
  const i32x16 ni = bits<i32x16>(t) - bits<i32x16>(magic);
  v16 r = x - n * 0.693359375f;  // ln 2 in two parts: the first exact in float32, so n * it is exact
  r = r - n * -2.12194440e-4f;
  v16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.f;
  const i32x16 n1 = ni >> 1, n2 = ni - n1;  // each in [-75, 0]: normal powers of two
  return p * bits<v16>((n1 + 127) << 23) * bits<v16>((n2 + 127) << 23);
}
}  // namespace
