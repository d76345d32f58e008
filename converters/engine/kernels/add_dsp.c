/*
 * bisup int8 kernels: ADD and SUB with the Cortex-M DSP extension (ARMv7E-M, ARMv8-M Mainline: M4, M7, M33).
 *
 * Covers both inputs of the output's shape (no broadcast: residual connections), left_shift <= 20 and every shift
 * in [-31, 0] (TFLM's int8 ADD always has them); returns 0 for anything else (add.c runs it). Every value it
 * scales is below 2^30 in magnitude (|x + offset| <= 255, shifted left by 20; each scaling only shrinks it), so
 * TFLM's srdhm(v, m) = floor((v m + 2^30) / 2^31) is one SMMULR of 2v: floor((2vm + 2^31) / 2^32), and the
 * rounding divide by 2^e is floor((h + 2^(e-1) - [h < 0 and e > 0]) / 2^e) (rounding half away from zero, no
 * overflow). No scratch memory. The output may be an input (the arena plan's in-place ADD): element i is read
 * before it is written.
 */
#include "bisup_kernel_internal.h"

#if BISUP_KERNEL_DSP

/* (a * b + 2^31) >> 32. */
static inline int32_t smmulr(int32_t a, int32_t b) {
  int32_t r;
  __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

typedef struct {
  int32_t multiplier, half, negative; /* negative: ~0 when e > 0, else 0 */
  int exponent;
} scaler;

static inline scaler scaler_of(int32_t multiplier, int32_t shift) {
  const int exponent = (int)-shift;
  const scaler s = {multiplier, exponent > 0 ? (int32_t)(1u << (exponent - 1)) : 0, exponent > 0 ? ~0 : 0, exponent};
  return s;
}

/* v * multiplier * 2^-e for twice_v = 2v, |v| < 2^30. */
static inline int32_t scale(int32_t twice_v, scaler s) {
  const int32_t h = smmulr(twice_v, s.multiplier);
  return (h + s.half + ((h >> 31) & s.negative)) >> s.exponent;
}

static int in_range(int32_t shift) { return shift <= 0 && shift >= -31; }

static int32_t elements(const bisup_kernel_shape *s) { return s->batches * s->height * s->width * s->depth; }

int bisup_kernel_add_dsp(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output,
                         int32_t sign) {
  const int32_t count = elements(&p->output);
  if (elements(&p->input1) != count || elements(&p->input2) != count || p->left_shift < 0 || p->left_shift > 20 ||
      !in_range(p->input1_shift) || !in_range(p->input2_shift) || !in_range(p->output_shift)) {
    return 0;
  }
  const scaler s1 = scaler_of(p->input1_multiplier, p->input1_shift);
  const scaler s2 = scaler_of(p->input2_multiplier, p->input2_shift);
  const scaler so = scaler_of(p->output_multiplier, p->output_shift);
  const int32_t off1 = p->input1_offset, off2 = p->input2_offset, left = p->left_shift + 1; /* + 1: twice */
  const int32_t off = p->output_offset, lo = p->activation_min, hi = p->activation_max;
  for (int32_t i = 0; i < count; ++i) {
    const int32_t a = scale((input1[i] + off1) * (1 << left), s1), v = scale((input2[i] + off2) * (1 << left), s2);
    output[i] = (int8_t)clamp32(scale(2 * (a + sign * v), so) + off, lo, hi);
  }
  return 1;
}
#else
typedef int bisup_kernel_add_dsp_unused; /* ISO C forbids an empty translation unit */
#endif
