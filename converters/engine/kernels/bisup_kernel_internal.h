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

/* A helper a kernel calls with constant flags (a full vector or a predicated tail, a clamp or none), to be
 * specialised at each call: every compiler of these kernels (GCC, Clang, Arm Compiler 6) takes this attribute. */
#define BISUP_KERNEL_SPECIALISED static inline __attribute__((always_inline))

#if BISUP_KERNEL_MVE
#include <arm_mve.h>

/* TFLM's MultiplyByQuantizedMultiplier (double rounding) on four int32 lanes, the shift split once for many
 * calls (left = max(shift, 0), right = min(shift, 0)), bit-exact with mbqm() for every int32 input and every
 * shift in [-31, 30]:
 * - the left shift is VSHL (register), which wraps as mbqm's (uint32_t)x << left does;
 * - gemmlowp's SaturatingRoundingDoublingHighMul is exactly VQRDMULH: for a*b = q*2^31 + r (0 <= r < 2^31) both
 *   give q + (r >= 2^30) (srdhm's nudge 1 - 2^30 with truncation toward zero rounds a negative tie up too), and
 *   both saturate only INT32_MIN * INT32_MIN, to INT32_MAX (this is how gemmlowp's own NEON path computes it);
 * - RoundingDivideByPOT (halves away from zero) is x - 1 for negative x (a saturating add: INT32_MIN stays,
 *   and rounds the same) then VRSHL's rounding shift right (halves up, computed without overflow): for
 *   x = q*2^e + r both give q + (r > 2^(e-1)) when x < 0 and q + (r >= 2^(e-1)) when x >= 0; e = 0 adds
 *   nothing (the fix-up is x & -e's sign bit).
 * tests/test_kernels_mve.py checks it on the emulated M55 against requantize() on 4 M corner and random cases;
 * tests/test_engine_isa.py checks whole models against tflite-micro. */
static inline int32x4_t bisup_kernel_mbqm_mve(int32x4_t x, int32x4_t multiplier, int32x4_t left, int32x4_t right) {
  x = vqrdmulhq_s32(vshlq_s32(x, left), multiplier);
  x = vqaddq_s32(x, vshrq_n_s32(vandq_s32(x, right), 31));
  return vrshlq_s32(x, right);
}

/* requantize() on four lanes, the shift split: the multiply, the output offset and the clamp. */
static inline int32x4_t bisup_kernel_requantize_split_mve(int32x4_t acc, int32x4_t multiplier, int32x4_t left,
                                                          int32x4_t right, int32_t output_offset, int32_t lo,
                                                          int32_t hi) {
  const int32x4_t x = vaddq_n_s32(bisup_kernel_mbqm_mve(acc, multiplier, left, right), output_offset);
  return vminq_s32(vmaxq_s32(x, vdupq_n_s32(lo)), vdupq_n_s32(hi));
}

/* requantize() on four lanes. */
static inline int32x4_t bisup_kernel_requantize_mve(int32x4_t acc, int32x4_t multiplier, int32x4_t shift,
                                                    int32_t output_offset, int32_t lo, int32_t hi) {
  const int32x4_t zero = vdupq_n_s32(0);
  return bisup_kernel_requantize_split_mve(acc, multiplier, vmaxq_s32(shift, zero), vminq_s32(shift, zero),
                                           output_offset, lo, hi);
}

/* Helium variants (conv_mve.c, depthwise_conv_mve.c, fully_connected_mve.c, add_mve.c): 1 when done, 0 for a
 * shape they do not cover (the portable kernel then runs it). */
int bisup_kernel_conv2d_mve(const bisup_kernel_conv_params *p, const int8_t *input, int8_t *output);
int bisup_kernel_depthwise_conv2d_mve(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output);
int bisup_kernel_fully_connected_mve(const bisup_kernel_fully_connected_params *p, const int8_t *input,
                                     int8_t *output);
/* ADD (sign 1) and SUB (sign -1), add_mve.c. */
int bisup_kernel_add_mve(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output,
                         int32_t sign);
#endif

/* A matrix product with TFLM's requantization, the core of CONV_2D (1x1 convolutions directly on the input,
 * the others on im2col columns) and FULLY_CONNECTED: out[c] = requantize(bias[c] + sum_i row[i] * weights[c][i])
 * for c < channels, for one or two rows of k int8 values at a time (two rows share each weight load). The
 * input offset is in bias (folded at export: bias + input_offset x sum(w), TFLM's sum as the same integer). */
typedef struct {
  const int8_t *weights; /* [channels][k] */
  int32_t k, channels;
  const int32_t *bias;               /* [channels], never NULL: the accumulators start from it */
  const int32_t *multiplier, *shift; /* [channels], or one entry when per_channel is 0 */
  int32_t per_channel;               /* 0 or 1 */
  int32_t output_offset, activation_min, activation_max;
  int32_t right_shifts; /* 1: every shift <= 0 and no multiplier INT32_MIN (bisup_kernel_gemm_right_shifts) */
} bisup_kernel_gemm;

/* 1 when every multiplier of the layer is above INT32_MIN and every shift <= 0 (the requantization's
 * short form applies); checked once per layer call (conv.c). */
int32_t bisup_kernel_gemm_right_shifts(const int32_t *multiplier, const int32_t *shift, int32_t count);

/* Rows row0 and row1 into out0 and out1; row1 (and out1) NULL: one row. */
typedef void bisup_kernel_gemm_rows_fn(const bisup_kernel_gemm *g, const int8_t *row0, const int8_t *row1,
                                       int8_t *out0, int8_t *out1);
bisup_kernel_gemm_rows_fn bisup_kernel_gemm_rows;     /* portable C (conv.c) */
bisup_kernel_gemm_rows_fn bisup_kernel_gemm_rows_dsp; /* SMLAD (conv_dsp.c), when BISUP_KERNEL_DSP */

/* The products run over blocks of this many output channels, their sums kept on the stack (2 x 256 bytes),
 * then requantized together (bisup_kernel_gemm_requantize: a tight loop, every parameter in a register). */
#define BISUP_KERNEL_GEMM_BLOCK 64

/* out[c] for c0 <= c < c1 from acc[c - c0] (conv.c). */
void bisup_kernel_gemm_requantize(const bisup_kernel_gemm *g, const int32_t *acc, int32_t c0, int32_t c1,
                                  int8_t *out);

/* The im2col scratch (conv.c): two columns of filter_height x filter_width x input depth int8 values. */
#ifndef BISUP_KERNEL_CONV_COLUMN_MAX
#define BISUP_KERNEL_CONV_COLUMN_MAX 1152 /* 3x3 on 128 channels; 2 columns: 2304 bytes of static RAM */
#endif
extern int8_t bisup_kernel_conv_columns[2][BISUP_KERNEL_CONV_COLUMN_MAX];

/* Output pixel (b, oy, ox)'s im2col column: [filter_height][filter_width][depth]; taps outside the input hold
 * the input zero point (-input_offset), whose x + input_offset is 0, as TFLM skips them. */
void bisup_kernel_conv_im2col(const bisup_kernel_conv_params *p, const int8_t *input, int32_t b, int32_t oy,
                              int32_t ox, int8_t *col);

/* CONV_2D as a matrix product over output pixels (conv.c): returns 0, computing nothing, for a filter whose
 * im2col column would not fit BISUP_KERNEL_CONV_COLUMN_MAX bytes. */
int bisup_kernel_conv2d_gemm(const bisup_kernel_conv_params *p, const int8_t *input, int8_t *output,
                             bisup_kernel_gemm_rows_fn *rows);

/* CONV_2D's DSP variant (conv_dsp.c): 0 for a shape it does not cover. FULLY_CONNECTED takes the DSP rows
 * (bisup_kernel_gemm_rows_dsp) directly: they cover every shape. */
int bisup_kernel_conv2d_dsp(const bisup_kernel_conv_params *p, const int8_t *input, int8_t *output);

/* mbqm in fewer instructions, equal to it for every multiplier (INT32_MIN, which quantize_multiplier never
 * makes, takes mbqm itself) and right shifts up to 31 (it returns none larger). srdhm's nudge-then-truncate is
 * one rounding shift of the 64-bit product for either sign: for ab < 0, C's truncation of (ab + 1 - 2^30) / 2^31 is
 * floor((ab + 2^30) / 2^31) (and ab + 2^30 cannot overflow int64), so |high| <= 2^31 - 2. rdbp by e >= 1, half
 * away from zero, is floor((h - [h < 0] + 2^(e-1)) / 2^e) = (((h - [h < 0]) >> (e - 1)) + 1) >> 1 (nested floors),
 * which cannot overflow for such h. */
static inline int32_t mbqm_fast(int32_t x, int32_t multiplier, int32_t shift) {
  if (multiplier == INT32_MIN) return mbqm(x, multiplier, (int)shift); /* never from the lowering; exact anyway */
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

#if BISUP_KERNEL_DSP
/* (a * b + 2^31) >> 32: SMMULR. */
static inline int32_t bisup_kernel_smmulr(int32_t a, int32_t b) {
  int32_t r;
  __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

/* requantize() of the DSP kernels' layers whose every accumulator is below 2^30 in magnitude, every shift a right
 * shift (-31..-1) and no multiplier INT32_MIN (each kernel checks this once per call), with e1 = -shift - 1 and
 * offset21 = 2 x output_offset + 1. Exact (equal to mbqm):
 * - |acc| < 2^30, so 2 acc fits and SMMULR (the high word of 2 acc x m + 2^31) is floor((acc x m + 2^30) / 2^31),
 *   srdhm as mbqm_fast computes it (no saturation: neither operand is INT32_MIN), |h| < 2^30;
 * - the right shift e = -shift in [1, 31]: rdbp(h, e) = ((h - [h < 0]) >> (e - 1) + 1) >> 1 (mbqm_fast), and
 *   floor((t + 1) / 2) + offset = floor((t + 1 + 2 offset) / 2) adds the output offset in the same step.
 * full (a constant at each call): the activation range is all of int8 (ReLU and ReLU6 of a real model's int8
 * output, or none), so that one SSAT both halves and clamps. */
BISUP_KERNEL_SPECIALISED int8_t bisup_kernel_requantize_short(int32_t acc, int32_t m, int32_t e1, int32_t offset21,
                                                              int32_t lo, int32_t hi, int full) {
  int32_t h = bisup_kernel_smmulr((int32_t)((uint32_t)acc << 1), m);
  h += h >> 31;
  int32_t v = (h >> e1) + offset21;
  if (full) {
    __asm__("ssat %0, #8, %0, asr #1" : "+r"(v));
    return (int8_t)v;
  }
  v >>= 1;
  v = v < lo ? lo : v;
  return (int8_t)(v > hi ? hi : v);
}
#endif

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
