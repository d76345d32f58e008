/*
 * What the kernels share, inline so that every kernel's inner loop can use it without a call: TFLM's
 * fixed-point requantization (double rounding), NHWC offsets, clamping, and the gemmlowp helpers the
 * softmax family and the logistic use (defined in fixedpoint.c).
 *
 * Not part of the public API (bisup_kernels.h); the names are static or start with bisup_kernel_.
 */
#ifndef BISUP_KERNEL_INTERNAL_H_
#define BISUP_KERNEL_INTERNAL_H_

#include <stddef.h>
#include <stdint.h>

#include "bisup_kernels.h"

/* The instruction set the kernels use, chosen when they are compiled, from the ACLE feature macros the
 * compiler sets for -mcpu (a board profile's arch): Helium (M-profile Vector Extension, integer) on the
 * Cortex-M55, the DSP extension's SIMD multiply-accumulates on ARMv7E-M and ARMv8-M Mainline (Cortex-M4, M7,
 * M33), portable C everywhere else. -DBISUP_KERNELS_PORTABLE forces portable C (the benchmarks' baseline).
 *
 * Each op's entry point (bisup_kernel_<op>) first offers the input to its ISA variant in <op>_mve.c or
 * <op>_dsp.c, which returns 0 for a shape it does not cover; the portable kernel then runs it. An
 * uncovered shape is slower, never wrong. */
#if !defined(BISUP_KERNELS_PORTABLE) && defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)
#define BISUP_KERNEL_MVE 1
#else
#define BISUP_KERNEL_MVE 0
#endif
#if !defined(BISUP_KERNELS_PORTABLE) && defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#define BISUP_KERNEL_DSP 1
#else
#define BISUP_KERNEL_DSP 0
#endif

static inline int32_t clamp32(int32_t x, int32_t lo, int32_t hi) { return x < lo ? lo : (x > hi ? hi : x); }

/* (a * b * 2) >> 32 rounded to nearest, halves away from zero; saturates the one overflowing product. */
static inline int32_t srdhm(int32_t a, int32_t b) {
  if (a == b && a == INT32_MIN) return INT32_MAX;
  int64_t ab = (int64_t)a * (int64_t)b;
  int32_t nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
  return (int32_t)((ab + nudge) / ((int64_t)1 << 31)); /* C division truncates toward zero */
}

/* x / 2^exponent rounded to nearest, halves away from zero. */
static inline int32_t rdbp(int32_t x, int exponent) {
  int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
  int32_t remainder = x & mask;
  int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* TFLM's MultiplyByQuantizedMultiplier: x * multiplier * 2^shift with its two roundings. */
static inline int32_t mbqm(int32_t x, int32_t multiplier, int shift) {
  int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
  int32_t scaled = (int32_t)((uint32_t)x << left); /* wraps as TFLM's int32 multiply does */
  return rdbp(srdhm(scaled, multiplier), right);
}

static inline int32_t offset4(const bisup_kernel_shape *s, int32_t b, int32_t y, int32_t x, int32_t c) {
  return ((b * s->height + y) * s->width + x) * s->depth + c;
}

static inline int8_t requantize(int32_t acc, int32_t multiplier, int32_t shift, int32_t output_offset, int32_t lo,
                                int32_t hi) {
  acc = mbqm(acc, multiplier, (int)shift) + output_offset;
  return (int8_t)clamp32(acc, lo, hi);
}

/* Index of a broadcast operand: a dimension of 1 stays at 0. */
static inline int32_t broadcast_offset(const bisup_kernel_shape *s, int32_t b, int32_t y, int32_t x, int32_t c) {
  return offset4(s, s->batches == 1 ? 0 : b, s->height == 1 ? 0 : y, s->width == 1 ? 0 : x, s->depth == 1 ? 0 : c);
}

static inline int32_t wrapping_add(int32_t a, int32_t b) { return (int32_t)((uint32_t)a + (uint32_t)b); }

/* mbqm in fewer instructions, equal to it for every multiplier but INT32_MIN (quantize_multiplier's are 0 or in
 * [2^30, 2^31)) and right shifts up to 31 (it returns none larger). srdhm's nudge-then-truncate is one rounding
 * shift of the 64-bit product for either sign: for ab < 0, C's truncation of (ab + 1 - 2^30) / 2^31 is
 * floor((ab + 2^30) / 2^31) (and ab + 2^30 cannot overflow int64), so |high| <= 2^31 - 2. rdbp by e >= 1, half
 * away from zero, is floor((h - [h < 0] + 2^(e-1)) / 2^e) = (((h - [h < 0]) >> (e - 1)) + 1) >> 1 (nested floors),
 * which cannot overflow for such h. */
static inline int32_t mbqm_fast(int32_t x, int32_t multiplier, int32_t shift) {
  if (shift >= 0) {
    const int32_t scaled = (int32_t)((uint32_t)x << shift); /* wraps as TFLM's int32 multiply does */
    return (int32_t)(((int64_t)scaled * multiplier + ((int64_t)1 << 30)) >> 31);
  }
  int32_t high = (int32_t)(((int64_t)x * multiplier + ((int64_t)1 << 30)) >> 31);
  high += high >> 31; /* h - [h < 0] */
  return ((high >> (-shift - 1)) + 1) >> 1;
}

static inline int8_t requantize_fast(int32_t acc, int32_t multiplier, int32_t shift, int32_t output_offset,
                                     int32_t lo, int32_t hi) {
  return (int8_t)clamp32(mbqm_fast(acc, multiplier, shift) + output_offset, lo, hi);
}

/* DEPTHWISE_CONV_2D (depthwise_conv.c): one output pixel, every channel, any shape, taps outside the input
 * skipped as TFLM's padding does; the ISA variants run their border pixels with it. */
void bisup_kernel_depthwise_pixel(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output,
                                  int32_t b, int32_t oy, int32_t ox);
/* The taps of output pixel (b, oy, ox), depth multiplier 1: src[t] points at tap t's input pixel (channel 0) and
 * mask[t] is ~0, or, for a tap outside the input, src[t] points at `zero_point` (the input's zero point, at least
 * 4 bytes of it) and mask[t] is 0: read channel c at src[t] + (c & mask[t]). Such a tap adds w x (zp + offset) = 0
 * to a window that starts from interior_bias, so every pixel sums as an interior one. */
void bisup_kernel_depthwise_taps(const bisup_kernel_depthwise_params *p, const int8_t *input, int32_t b, int32_t oy,
                                 int32_t ox, const int8_t *zero_point, const int8_t **src, int32_t *mask);
/* The output rows (or columns) [*lo, *hi) whose every tap lies inside the input. */
void bisup_kernel_interior_range(int32_t out_n, int32_t stride, int32_t pad, int32_t dilation, int32_t filter,
                                 int32_t in_n, int32_t *lo, int32_t *hi);
/* ADD / SUB's DSP variant (add_dsp.c; sign +1 or -1): 1 when it ran the op, 0 for shapes it does not cover. */
int bisup_kernel_add_dsp(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output,
                         int32_t sign);
/* The DSP variant (depthwise_conv_dsp.c): 1 when it ran the op, 0 for a shape it does not cover. */
int bisup_kernel_depthwise_conv2d_dsp(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output);

/* gemmlowp fixed point for the softmax family and the logistic (fixedpoint.c). */
int32_t bisup_kernel_saturating_shift_left(int32_t x, int exponent);
int32_t bisup_kernel_exp_on_negative_values(int32_t a, int integer_bits);
int32_t bisup_kernel_one_over_one_plus_x(int32_t a);
int32_t bisup_kernel_rounding_half_sum(int32_t a, int32_t b);
int bisup_kernel_count_leading_zeros(uint32_t x);

#endif /* BISUP_KERNEL_INTERNAL_H_ */
