// What the kernels in csrc/ share: 16 floats (or 16 32-bit integers) as one vector value, with GCC/Clang's
// vector extension, so that the sources stay free of per-ISA intrinsics where the compiler does well: one
// AVX-512 register where the CPU has them, two AVX2 or four NEON registers elsewhere.
#pragma once

#include <cstdint>
#include <cstring>

namespace {
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
}  // namespace
