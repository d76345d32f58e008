/*
 * bisup int8 kernels: DEPTHWISE_CONV_2D (see bisup_kernels.h).
 *
 * Paths, tried in order (each gives TFLM's bytes; the int32 sums are TFLM's, the requantization is TFLM's):
 *  - an ISA variant (depthwise_conv_dsp.c on the Cortex-M DSP extension) when it covers the shape;
 *  - depth multiplier 1, at most BISUP_DW_MAX_TAPS filter taps, interior_bias given (the generator always gives
 *    it): output pixels outside, channels inside, four channels per pass. Every pixel starts from interior_bias =
 *    bias + input_offset x sum(taps), so its taps need no offset: sum(w * (x + off)) = sum(w * x) + off * sum(w);
 *    a tap outside the input (padding) reads the input's zero point instead, which adds w * (zp + off) = 0. Any
 *    stride, dilation, padding, filter size and channel count (the last depth % 4 channels one at a time);
 *  - everything else (depth multiplier > 1, larger filters): the general per-pixel path, taps outside the input
 *    skipped as TFLM's padding does.
 * No scratch memory beyond BISUP_DW_MAX_TAPS tap pointers and masks on the stack.
 */
#include "bisup_kernel_internal.h"

#define BISUP_DW_MAX_TAPS 25 /* 5 x 5: the fast path's tap pointers and masks, 200 bytes of stack */

void bisup_kernel_depthwise_pixel(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output,
                                  int32_t b, int32_t oy, int32_t ox) {
  const bisup_kernel_shape *in = &p->input, *out = &p->output;
  const int32_t y0 = oy * p->stride_height - p->pad_height, x0 = ox * p->stride_width - p->pad_width;
  int8_t *o = output + offset4(out, b, oy, ox, 0);
  for (int32_t ic = 0; ic < in->depth; ++ic) {
    for (int32_t m = 0; m < p->depth_multiplier; ++m) {
      const int32_t oc = ic * p->depth_multiplier + m;
      int32_t acc = 0;
      for (int32_t fy = 0; fy < p->filter_height; ++fy) {
        const int32_t iy = y0 + p->dilation_height * fy;
        if (iy < 0 || iy >= in->height) continue;
        for (int32_t fx = 0; fx < p->filter_width; ++fx) {
          const int32_t ix = x0 + p->dilation_width * fx;
          if (ix < 0 || ix >= in->width) continue;
          const int32_t tap = p->filter[(fy * p->filter_width + fx) * out->depth + oc];
          acc += tap * (input[offset4(in, b, iy, ix, ic)] + p->input_offset);
        }
      }
      if (p->bias) acc += p->bias[oc];
      o[oc] = requantize_fast(acc, p->multiplier[oc], p->shift[oc], p->output_offset, p->activation_min,
                              p->activation_max);
    }
  }
}

void bisup_kernel_interior_range(int32_t out_n, int32_t stride, int32_t pad, int32_t dilation, int32_t filter,
                                 int32_t in_n, int32_t *lo, int32_t *hi) {
  int32_t a = 0, z = out_n;
  while (a < out_n && a * stride - pad < 0) ++a;
  while (z > a && (z - 1) * stride - pad + (filter - 1) * dilation > in_n - 1) --z;
  *lo = a;
  *hi = z;
}

void bisup_kernel_depthwise_taps(const bisup_kernel_depthwise_params *p, const int8_t *input, int32_t b, int32_t oy,
                                 int32_t ox, const int8_t *zero_point, const int8_t **src, int32_t *mask) {
  const bisup_kernel_shape *in = &p->input;
  const int32_t y0 = oy * p->stride_height - p->pad_height, x0 = ox * p->stride_width - p->pad_width;
  int32_t t = 0;
  for (int32_t fy = 0; fy < p->filter_height; ++fy) {
    const int32_t iy = y0 + fy * p->dilation_height;
    for (int32_t fx = 0; fx < p->filter_width; ++fx, ++t) {
      const int32_t ix = x0 + fx * p->dilation_width;
      const int inside = iy >= 0 && iy < in->height && ix >= 0 && ix < in->width;
      src[t] = inside ? input + offset4(in, b, iy, ix, 0) : zero_point;
      mask[t] = inside ? ~0 : 0;
    }
  }
}

/* One output pixel, depth multiplier 1, from its taps (bisup_kernel_depthwise_taps). */
static void pixel(const bisup_kernel_depthwise_params *p, int8_t *restrict o, const int8_t *const *src,
                  const int32_t *mask, int32_t taps) {
  const int32_t depth = p->output.depth, off = p->output_offset, lo = p->activation_min, hi = p->activation_max;
  int32_t c = 0;
  for (; c + 4 <= depth; c += 4) {
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0; /* |sum| <= 128 x 128 x taps: no overflow */
    const int8_t *w = p->filter + c;
    for (int32_t t = 0; t < taps; ++t, w += depth) {
      const int8_t *v = src[t] + (c & mask[t]);
      a0 += w[0] * v[0];
      a1 += w[1] * v[1];
      a2 += w[2] * v[2];
      a3 += w[3] * v[3];
    }
    const int32_t *ib = p->interior_bias + c, *mu = p->multiplier + c, *sh = p->shift + c;
    o[c] = requantize_fast(wrapping_add(ib[0], a0), mu[0], sh[0], off, lo, hi);
    o[c + 1] = requantize_fast(wrapping_add(ib[1], a1), mu[1], sh[1], off, lo, hi);
    o[c + 2] = requantize_fast(wrapping_add(ib[2], a2), mu[2], sh[2], off, lo, hi);
    o[c + 3] = requantize_fast(wrapping_add(ib[3], a3), mu[3], sh[3], off, lo, hi);
  }
  for (; c < depth; ++c) {
    int32_t a = 0;
    for (int32_t t = 0; t < taps; ++t) a += p->filter[t * depth + c] * src[t][c & mask[t]];
    o[c] = requantize_fast(wrapping_add(p->interior_bias[c], a), p->multiplier[c], p->shift[c], off, lo, hi);
  }
}

static int depthwise_multiplier_one(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output) {
  const bisup_kernel_shape *out = &p->output;
  const int32_t taps = p->filter_height * p->filter_width, zp = -p->input_offset;
  if (p->depth_multiplier != 1 || !p->interior_bias || taps > BISUP_DW_MAX_TAPS || zp < -128 || zp > 127) return 0;
  const int8_t zero_point[4] = {(int8_t)zp, (int8_t)zp, (int8_t)zp, (int8_t)zp};
  const int8_t *src[BISUP_DW_MAX_TAPS];
  int32_t mask[BISUP_DW_MAX_TAPS];
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t oy = 0; oy < out->height; ++oy) {
      for (int32_t ox = 0; ox < out->width; ++ox) {
        bisup_kernel_depthwise_taps(p, input, b, oy, ox, zero_point, src, mask);
        pixel(p, output + offset4(out, b, oy, ox, 0), src, mask, taps);
      }
    }
  }
  return 1;
}

void bisup_kernel_depthwise_conv2d(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output) {
#if BISUP_KERNEL_MVE
  if (bisup_kernel_depthwise_conv2d_mve(p, input, output)) return;
#endif
#if BISUP_KERNEL_DSP
  if (bisup_kernel_depthwise_conv2d_dsp(p, input, output)) return;
#endif
  if (depthwise_multiplier_one(p, input, output)) return;
  for (int32_t b = 0; b < p->output.batches; ++b) {
    for (int32_t oy = 0; oy < p->output.height; ++oy) {
      for (int32_t ox = 0; ox < p->output.width; ++ox) bisup_kernel_depthwise_pixel(p, input, output, b, oy, ox);
    }
  }
}
