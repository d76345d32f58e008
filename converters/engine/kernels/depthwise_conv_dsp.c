/*
 * bisup int8 kernels: DEPTHWISE_CONV_2D with the Cortex-M DSP extension (ARMv7E-M, ARMv8-M Mainline: M4, M7, M33).
 *
 * Covers depth multiplier 1, at most BISUP_DW_DSP_MAX_TAPS taps, depth >= 4, interior_bias given (the generator
 * always gives it); any stride, dilation, padding, batch. Returns 0 for anything else (depthwise_conv.c runs it).
 *
 * Interior pixels (every tap inside the input) take four adjacent channels per pass: the input and filter bytes of
 * four channels are one 32-bit word (read with memcpy: an unaligned LDR), __sxtb16 splits each word into its even
 * and odd channels as int16 pairs, and __smlabb / __smlatt add one channel's product each into four int32
 * accumulators that start from interior_bias (bias + input_offset x the channel's tap sum): the sums are TFLM's
 * sum(w * (x + input_offset)) + bias, exactly. Interior pixels of a 3 x 3 filter are unrolled; border pixels and
 * other filters read their taps through pointers, a tap outside the input reading the input's zero point (which
 * adds w * (zp + input_offset) = 0). The last depth % 4 channels go one by one. No scratch memory.
 */
#include "bisup_kernel_internal.h"

#if BISUP_KERNEL_DSP
#include <arm_acle.h>
#include <string.h>

#define BISUP_DW_DSP_MAX_TAPS 25 /* 5 x 5: tap pointers and masks, 200 bytes of stack */

static inline int32_t word(const int8_t *p) {
  int32_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* The odd bytes of v as two int16: SXTB16 with its rotation (GCC 12's arm_acle.h has no __ror to fold into it). */
static inline int32_t sxtb16_ror8(int32_t v) {
  int32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
  return r;
}

/* One tap of four channels: the products of input word xv and filter word wv added to a0..a3. */
#define BISUP_DW_TAP(xv, wv)                         \
  do {                                               \
    const int32_t x_ = (xv), w_ = (wv);              \
    const int32_t x02 = __sxtb16(x_), w02 = __sxtb16(w_); \
    const int32_t x13 = sxtb16_ror8(x_); \
    const int32_t w13 = sxtb16_ror8(w_); \
    a0 = __smlabb(x02, w02, a0);                     \
    a2 = __smlatt(x02, w02, a2);                     \
    a1 = __smlabb(x13, w13, a1);                     \
    a3 = __smlatt(x13, w13, a3);                     \
  } while (0)

static void store4(const bisup_kernel_depthwise_params *p, int32_t c, int8_t *restrict o, int32_t a0, int32_t a1,
                   int32_t a2, int32_t a3) {
  const int32_t off = p->output_offset, lo = p->activation_min, hi = p->activation_max;
  const int32_t *ib = p->interior_bias + c, *mu = p->multiplier + c, *sh = p->shift + c;
  o[c] = requantize_fast(wrapping_add(ib[0], a0), mu[0], sh[0], off, lo, hi);
  o[c + 1] = requantize_fast(wrapping_add(ib[1], a1), mu[1], sh[1], off, lo, hi);
  o[c + 2] = requantize_fast(wrapping_add(ib[2], a2), mu[2], sh[2], off, lo, hi);
  o[c + 3] = requantize_fast(wrapping_add(ib[3], a3), mu[3], sh[3], off, lo, hi);
}

/* One output pixel from its taps (bisup_kernel_depthwise_taps): any filter, border pixels too. */
static void pixel_taps(const bisup_kernel_depthwise_params *p, int8_t *restrict o, const int8_t *const *src,
                       const int32_t *mask, int32_t taps) {
  const int32_t depth = p->output.depth;
  int32_t c = 0;
  for (; c + 4 <= depth; c += 4) {
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    const int8_t *w = p->filter + c;
    for (int32_t t = 0; t < taps; ++t, w += depth) BISUP_DW_TAP(word(src[t] + (c & mask[t])), word(w));
    store4(p, c, o, a0, a1, a2, a3);
  }
  for (; c < depth; ++c) {
    int32_t a = 0;
    for (int32_t t = 0; t < taps; ++t) a += p->filter[t * depth + c] * src[t][c & mask[t]];
    o[c] = requantize_fast(wrapping_add(p->interior_bias[c], a), p->multiplier[c], p->shift[c], p->output_offset,
                           p->activation_min, p->activation_max);
  }
}

/* An interior pixel, 3 x 3 filter: `row` is the distance between filter rows in the input, `col` between columns. */
static void pixel_3x3(const bisup_kernel_depthwise_params *p, const int8_t *x, int8_t *restrict o, int32_t row,
                      int32_t col) {
  const int32_t depth = p->output.depth;
  int32_t c = 0;
  for (; c + 4 <= depth; c += 4) {
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    const int8_t *w = p->filter + c, *v = x + c;
    BISUP_DW_TAP(word(v), word(w));
    BISUP_DW_TAP(word(v + col), word(w + depth));
    BISUP_DW_TAP(word(v + 2 * col), word(w + 2 * depth));
    v += row;
    w += 3 * depth;
    BISUP_DW_TAP(word(v), word(w));
    BISUP_DW_TAP(word(v + col), word(w + depth));
    BISUP_DW_TAP(word(v + 2 * col), word(w + 2 * depth));
    v += row;
    w += 3 * depth;
    BISUP_DW_TAP(word(v), word(w));
    BISUP_DW_TAP(word(v + col), word(w + depth));
    BISUP_DW_TAP(word(v + 2 * col), word(w + 2 * depth));
    store4(p, c, o, a0, a1, a2, a3);
  }
  for (; c < depth; ++c) {
    const int8_t *w = p->filter + c, *v = x + c;
    int32_t a = 0;
    for (int32_t fy = 0; fy < 3; ++fy, v += row, w += 3 * depth) {
      a += w[0] * v[0] + w[depth] * v[col] + w[2 * depth] * v[2 * col];
    }
    o[c] = requantize_fast(wrapping_add(p->interior_bias[c], a), p->multiplier[c], p->shift[c], p->output_offset,
                           p->activation_min, p->activation_max);
  }
}

int bisup_kernel_depthwise_conv2d_dsp(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output) {
  const bisup_kernel_shape *in = &p->input, *out = &p->output;
  const int32_t taps = p->filter_height * p->filter_width, zp = -p->input_offset;
  if (p->depth_multiplier != 1 || !p->interior_bias || taps > BISUP_DW_DSP_MAX_TAPS || in->depth < 4 || zp < -128 ||
      zp > 127) {
    return 0;
  }
  const int8_t zero_point[4] = {(int8_t)zp, (int8_t)zp, (int8_t)zp, (int8_t)zp};
  const int8_t *src[BISUP_DW_DSP_MAX_TAPS];
  int32_t mask[BISUP_DW_DSP_MAX_TAPS];
  const int is_3x3 = p->filter_height == 3 && p->filter_width == 3;
  const int32_t row = p->dilation_height * in->width * in->depth, col = p->dilation_width * in->depth;
  int32_t y_lo, y_hi, x_lo, x_hi;
  bisup_kernel_interior_range(out->height, p->stride_height, p->pad_height, p->dilation_height, p->filter_height,
                              in->height, &y_lo, &y_hi);
  bisup_kernel_interior_range(out->width, p->stride_width, p->pad_width, p->dilation_width, p->filter_width,
                              in->width, &x_lo, &x_hi);
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t oy = 0; oy < out->height; ++oy) {
      const int inside = oy >= y_lo && oy < y_hi;
      for (int32_t ox = 0; ox < out->width; ++ox) {
        int8_t *o = output + offset4(out, b, oy, ox, 0);
        if (is_3x3 && inside && ox >= x_lo && ox < x_hi) {
          const int32_t iy = oy * p->stride_height - p->pad_height, ix = ox * p->stride_width - p->pad_width;
          pixel_3x3(p, input + offset4(in, b, iy, ix, 0), o, row, col);
        } else {
          bisup_kernel_depthwise_taps(p, input, b, oy, ox, zero_point, src, mask);
          pixel_taps(p, o, src, mask, taps);
        }
      }
    }
  }
  return 1;
}
#else
typedef int bisup_kernel_depthwise_dsp_unused; /* ISO C forbids an empty translation unit */
#endif
