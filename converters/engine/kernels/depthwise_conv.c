/*
 * bisup int8 kernels: DEPTHWISE_CONV_2D (see bisup_kernels.h).
 *
 * Paths, tried in order (each gives TFLM's bytes; the int32 sums are TFLM's, the requantization is TFLM's):
 *  - an ISA variant (depthwise_conv_dsp.c on the Cortex-M DSP extension) when it covers the shape;
 *  - depth multiplier 1, at most BISUP_DW_MAX_TAPS filter taps, interior_bias given (the generator always gives
 *    it): output pixels outside, channels inside, four channels per pass. A pixel whose every tap lies inside the
 *    input (an interior pixel) starts from interior_bias = bias + input_offset x sum(taps), so its taps need no
 *    offset and no bounds check: sum(w * (x + off)) = sum(w * x) + off * sum(w). Any stride, dilation, padding,
 *    filter size and channel count (the last depth % 4 channels one at a time);
 *  - everything else (depth multiplier > 1, border pixels, larger filters): the general per-pixel path, taps
 *    outside the input skipped as TFLM's padding does.
 * No scratch memory: the tap offsets live in a BISUP_DW_MAX_TAPS-entry array on the stack.
 */
#include "bisup_kernel_internal.h"

#define BISUP_DW_MAX_TAPS 25 /* 5 x 5: the portable fast path's tap offsets, 100 bytes of stack */

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

/* One interior pixel, depth multiplier 1: `x` points at its window's first tap (channel 0), `offsets` holds each
 * tap's distance from it. */
static void interior_pixel(const bisup_kernel_depthwise_params *p, const int8_t *x, int8_t *o,
                           const int32_t *offsets, int32_t taps) {
  const int32_t depth = p->output.depth, off = p->output_offset, lo = p->activation_min, hi = p->activation_max;
  int32_t c = 0;
  for (; c + 4 <= depth; c += 4) {
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0; /* |sum| <= 128 x 127 x taps: no overflow */
    const int8_t *w = p->filter + c;
    for (int32_t t = 0; t < taps; ++t, w += depth) {
      const int8_t *v = x + offsets[t] + c;
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
    for (int32_t t = 0; t < taps; ++t) a += p->filter[t * depth + c] * x[offsets[t] + c];
    o[c] = requantize_fast(wrapping_add(p->interior_bias[c], a), p->multiplier[c], p->shift[c], off, lo, hi);
  }
}

static int depthwise_multiplier_one(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output) {
  const bisup_kernel_shape *in = &p->input, *out = &p->output;
  const int32_t taps = p->filter_height * p->filter_width;
  if (p->depth_multiplier != 1 || !p->interior_bias || taps > BISUP_DW_MAX_TAPS) return 0;
  int32_t offsets[BISUP_DW_MAX_TAPS];
  for (int32_t fy = 0; fy < p->filter_height; ++fy) {
    for (int32_t fx = 0; fx < p->filter_width; ++fx) {
      offsets[fy * p->filter_width + fx] = (fy * p->dilation_height * in->width + fx * p->dilation_width) * in->depth;
    }
  }
  int32_t y_lo, y_hi, x_lo, x_hi;
  bisup_kernel_interior_range(out->height, p->stride_height, p->pad_height, p->dilation_height, p->filter_height,
                              in->height, &y_lo, &y_hi);
  bisup_kernel_interior_range(out->width, p->stride_width, p->pad_width, p->dilation_width, p->filter_width,
                              in->width, &x_lo, &x_hi);
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t oy = 0; oy < out->height; ++oy) {
      const int inside = oy >= y_lo && oy < y_hi;
      for (int32_t ox = 0; ox < out->width; ++ox) {
        if (!inside || ox < x_lo || ox >= x_hi) {
          bisup_kernel_depthwise_pixel(p, input, output, b, oy, ox);
          continue;
        }
        const int32_t iy = oy * p->stride_height - p->pad_height, ix = ox * p->stride_width - p->pad_width;
        interior_pixel(p, input + offset4(in, b, iy, ix, 0), output + offset4(out, b, oy, ox, 0), offsets, taps);
      }
    }
  }
  return 1;
}

void bisup_kernel_depthwise_conv2d(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output) {
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
