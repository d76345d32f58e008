/*
 * bisup int8 kernels: ADD and SUB (see bisup_kernels.h).
 *
 * TFLM's arithmetic: each input plus its offset, shifted left by left_shift (20), scaled down by its multiplier;
 * the sum (or difference) scaled down by the output multiplier, each scaling TFLM's
 * MultiplyByQuantizedMultiplierSmallerThanOneExp.
 *
 * Paths: both inputs of the output's shape (no broadcast: residual connections), left_shift <= 22 and every shift in
 * [-31, 0] (TFLM's int8 ADD always has them): one flat loop whose scalings are branch-free (`scaler`: every value
 * it sees is below 2^30 in magnitude, so the rounding divide's nudge cannot overflow). Anything else: the 4-D
 * broadcast walk with mbqm_fast (equal to mbqm for the multipliers the lowering computes).
 */
#include "bisup_kernel_internal.h"

static inline int8_t add_one(const bisup_kernel_add_params *p, int32_t x1, int32_t x2, int32_t sign) {
  const int32_t a = (int32_t)((uint32_t)(p->input1_offset + x1) << p->left_shift); /* |a| <= 255 x 2^20 */
  const int32_t v = (int32_t)((uint32_t)(p->input2_offset + x2) << p->left_shift);
  const int32_t sa = mbqm_fast(a, p->input1_multiplier, p->input1_shift);
  const int32_t sv = mbqm_fast(v, p->input2_multiplier, p->input2_shift);
  const int32_t raw = mbqm_fast(sa + sign * sv, p->output_multiplier, p->output_shift) + p->output_offset;
  return (int8_t)clamp32(raw, p->activation_min, p->activation_max);
}

/* x * multiplier * 2^shift for shift in [-31, 0] and |x| < 2^30: srdhm as one rounding shift of the 64-bit
 * product (see mbqm_fast), then rdbp by e = -shift as floor((h + 2^(e-1) - [h < 0 and e > 0]) / 2^e), which is
 * rounding half away from zero and cannot overflow since |h| <= |x|. */
typedef struct {
  int32_t multiplier, half, negative; /* negative: ~0 when e > 0 (h < 0 then subtracts 1), else 0 */
  int exponent;
} scaler;

static inline scaler scaler_of(int32_t multiplier, int32_t shift) {
  const int exponent = (int)-shift;
  const scaler s = {multiplier, exponent > 0 ? (int32_t)(1u << (exponent - 1)) : 0, exponent > 0 ? ~0 : 0, exponent};
  return s;
}

static inline int32_t scale(int32_t x, scaler s) {
  const int32_t h = (int32_t)(((int64_t)x * s.multiplier + ((int64_t)1 << 30)) >> 31);
  return (h + s.half + ((h >> 31) & s.negative)) >> s.exponent;
}

static int in_range(int32_t shift) { return shift <= 0 && shift >= -31; }

static int32_t elements(const bisup_kernel_shape *s) { return s->batches * s->height * s->width * s->depth; }

static void add_or_sub(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2,
                       int8_t *output, int32_t sign) {
  const bisup_kernel_shape *out = &p->output;
  const int32_t count = elements(out);
#if BISUP_KERNEL_DSP
  if (bisup_kernel_add_dsp(p, input1, input2, output, sign)) return;
#endif
  if (elements(&p->input1) == count && elements(&p->input2) == count && p->left_shift >= 0 && p->left_shift <= 22 &&
      in_range(p->input1_shift) && in_range(p->input2_shift) && in_range(p->output_shift)) {
    const scaler s1 = scaler_of(p->input1_multiplier, p->input1_shift);
    const scaler s2 = scaler_of(p->input2_multiplier, p->input2_shift);
    const scaler so = scaler_of(p->output_multiplier, p->output_shift);
    const int32_t off1 = p->input1_offset, off2 = p->input2_offset, left = p->left_shift;
    const int32_t off = p->output_offset, lo = p->activation_min, hi = p->activation_max;
    for (int32_t i = 0; i < count; ++i) { /* |x + offset| <= 255: the shifted inputs are below 2^30 */
      const int32_t a = scale((input1[i] + off1) * (1 << left), s1), v = scale((input2[i] + off2) * (1 << left), s2);
      output[i] = (int8_t)clamp32(scale(a + sign * v, so) + off, lo, hi);
    }
    return;
  }
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t y = 0; y < out->height; ++y) {
      for (int32_t x = 0; x < out->width; ++x) {
        for (int32_t c = 0; c < out->depth; ++c) {
          output[offset4(out, b, y, x, c)] = add_one(p, input1[broadcast_offset(&p->input1, b, y, x, c)],
                                                     input2[broadcast_offset(&p->input2, b, y, x, c)], sign);
        }
      }
    }
  }
}

void bisup_kernel_add(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output) {
#if BISUP_KERNEL_MVE
  if (bisup_kernel_add_mve(p, input1, input2, output, 1)) return;
#endif
  add_or_sub(p, input1, input2, output, 1);
}

void bisup_kernel_sub(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output) {
#if BISUP_KERNEL_MVE
  if (bisup_kernel_add_mve(p, input1, input2, output, -1)) return;
#endif
  add_or_sub(p, input1, input2, output, -1);
}
