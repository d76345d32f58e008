/* bisup int8 kernels: CONV_2D (see bisup_kernels.h).
 *
 * Paths, chosen at run time from the parameters:
 * - the ISA variant first (conv_dsp.c on Cortex-M4/M7/M33), which returns 0 for what it does not cover;
 * - 1x1 filters without padding (any stride, any batch): a matrix product directly on the input pixels,
 *   two pixels x two output channels per pass (bisup_kernel_gemm_rows);
 * - any other filter whose im2col column (filter_height x filter_width x input depth int8 values) fits
 *   BISUP_KERNEL_CONV_COLUMN_MAX bytes: two output pixels at a time are copied into a static scratch of
 *   2 x BISUP_KERNEL_CONV_COLUMN_MAX bytes (taps outside the input hold the input zero point, so their
 *   x + input_offset is 0 exactly as TFLM skips them), then the same matrix product;
 * - anything larger: the direct loop below (no scratch).
 * Every path sums sum(w * x) + input_offset * sum(w) + bias: TFLM's sum(w * (x + offset)) + bias as the
 * same integer (the matrix products start from folded_bias = bias + input_offset * sum(w)), then TFLM's
 * requantization.
 */
#include <string.h>

#include "bisup_kernel_internal.h"

int8_t bisup_kernel_conv_columns[2][BISUP_KERNEL_CONV_COLUMN_MAX];

/* Portable matrix product: 2 channels x 2 rows per pass, each load used twice. */
static void gemm_block(const bisup_kernel_gemm *gemm, const int8_t *row0, const int8_t *row1, int32_t c0, int32_t c1,
                       int32_t *acc0, int32_t *acc1) {
  const bisup_kernel_gemm local = *gemm, *g = &local; /* a local copy: the sums' stores cannot alias it */
  const int32_t k = g->k;
  int32_t c = c0;
  for (; c + 2 <= c1; c += 2) {
    const int8_t *w0 = g->weights + (size_t)c * k, *w1 = w0 + k;
    int32_t a00 = g->bias[c], a01 = g->bias[c + 1], a10 = a00, a11 = a01; /* a<row><channel> */
    if (row1) {
      for (int32_t i = 0; i < k; ++i) {
        const int32_t x0 = row0[i], x1 = row1[i], v0 = w0[i], v1 = w1[i];
        a00 += x0 * v0;
        a01 += x0 * v1;
        a10 += x1 * v0;
        a11 += x1 * v1;
      }
      acc1[c - c0] = a10;
      acc1[c - c0 + 1] = a11;
    } else {
      for (int32_t i = 0; i < k; ++i) {
        const int32_t x0 = row0[i];
        a00 += x0 * w0[i];
        a01 += x0 * w1[i];
      }
    }
    acc0[c - c0] = a00;
    acc0[c - c0 + 1] = a01;
  }
  if (c < c1) {
    const int8_t *w0 = g->weights + (size_t)c * k;
    int32_t a00 = g->bias[c], a10 = a00;
    for (int32_t i = 0; i < k; ++i) {
      a00 += row0[i] * w0[i];
      if (row1) a10 += row1[i] * w0[i];
    }
    acc0[c - c0] = a00;
    if (row1) acc1[c - c0] = a10;
  }
}

void bisup_kernel_gemm_rows(const bisup_kernel_gemm *g, const int8_t *row0, const int8_t *row1, int8_t *out0,
                            int8_t *out1) {
  int32_t acc0[BISUP_KERNEL_GEMM_BLOCK], acc1[BISUP_KERNEL_GEMM_BLOCK];
  for (int32_t c0 = 0; c0 < g->channels; c0 += BISUP_KERNEL_GEMM_BLOCK) {
    const int32_t c1 = g->channels - c0 < BISUP_KERNEL_GEMM_BLOCK ? g->channels : c0 + BISUP_KERNEL_GEMM_BLOCK;
    gemm_block(g, row0, row1, c0, c1, acc0, acc1);
    bisup_kernel_gemm_requantize(g, acc0, c0, c1, out0);
    if (row1) bisup_kernel_gemm_requantize(g, acc1, c0, c1, out1);
  }
}

int32_t bisup_kernel_gemm_right_shifts(const int32_t *multiplier, const int32_t *shift, int32_t count) {
  for (int32_t c = 0; c < count; ++c) {
    if (multiplier[c] == INT32_MIN || shift[c] > 0) return 0;
  }
  return 1;
}

/* With right_shifts, mbqm_fast's short form: x * multiplier in one SMLAL (the rounding 2^30 as its start),
 * then TFLM's rounding divide by 2^-shift; no branch. */
void bisup_kernel_gemm_requantize(const bisup_kernel_gemm *g, const int32_t *acc, int32_t c0, int32_t c1,
                                  int8_t *out) {
  const int32_t step = g->per_channel, output_offset = g->output_offset;
  const int32_t lo = g->activation_min, hi = g->activation_max;
  const int32_t *multiplier = g->multiplier + c0 * step, *shift = g->shift + c0 * step;
  out += c0;
  if (g->right_shifts) {
    for (int32_t n = 0; n < c1 - c0; ++n) {
      const int32_t right = -shift[n * step];
      const int32_t high = (int32_t)(((int64_t)acc[n] * multiplier[n * step] + ((int64_t)1 << 30)) >> 31);
      const int32_t mask = (int32_t)((1u << right) - 1u);
      const int32_t threshold = (mask >> 1) + (int32_t)((uint32_t)high >> 31);
      int32_t v = (high >> right) + ((high & mask) > threshold) + output_offset;
      v = v < lo ? lo : v;
      out[n] = (int8_t)(v > hi ? hi : v);
    }
    return;
  }
  for (int32_t n = 0; n < c1 - c0; ++n) {
    const int32_t v = mbqm_fast(acc[n], multiplier[n * step], (int)shift[n * step]) + output_offset;
    out[n] = (int8_t)clamp32(v, lo, hi);
  }
}

/* The im2col column of output pixel (b, oy, ox): [filter_height][filter_width][depth], padding = zero point. */
void bisup_kernel_conv_im2col(const bisup_kernel_conv_params *p, const int8_t *input, int32_t b, int32_t oy,
                              int32_t ox, int8_t *col) {
  const bisup_kernel_shape *in = &p->input;
  const int32_t depth = in->depth, row_bytes = p->filter_width * depth;
  const int8_t zero_point = (int8_t)(-p->input_offset);
  const int32_t y0 = oy * p->stride_height - p->pad_height, x0 = ox * p->stride_width - p->pad_width;
  const int32_t x_last = x0 + (p->filter_width - 1) * p->dilation_width;
  for (int32_t fy = 0; fy < p->filter_height; ++fy, col += row_bytes) {
    const int32_t y = y0 + fy * p->dilation_height;
    if (y < 0 || y >= in->height) {
      memset(col, zero_point, (size_t)row_bytes);
    } else if (p->dilation_width == 1 && x0 >= 0 && x_last < in->width) {
      memcpy(col, input + offset4(in, b, y, x0, 0), (size_t)row_bytes);
    } else {
      for (int32_t fx = 0; fx < p->filter_width; ++fx) {
        const int32_t x = x0 + fx * p->dilation_width;
        if (x < 0 || x >= in->width) {
          memset(col + fx * depth, zero_point, (size_t)depth);
        } else {
          memcpy(col + fx * depth, input + offset4(in, b, y, x, 0), (size_t)depth);
        }
      }
    }
  }
}

int bisup_kernel_conv2d_gemm(const bisup_kernel_conv_params *p, const int8_t *input, int8_t *output,
                             bisup_kernel_gemm_rows_fn *rows) {
  const bisup_kernel_shape *out = &p->output;
  const int32_t k = p->filter_height * p->filter_width * p->input.depth;
  const int direct = p->filter_height == 1 && p->filter_width == 1 && p->pad_height == 0 && p->pad_width == 0;
  if (!direct && k > BISUP_KERNEL_CONV_COLUMN_MAX) return 0;
  const bisup_kernel_gemm g = {.weights = p->filter, .k = k, .channels = out->depth, .bias = p->folded_bias,
                               .multiplier = p->multiplier, .shift = p->shift, .per_channel = 1,
                               .output_offset = p->output_offset, .activation_min = p->activation_min,
                               .activation_max = p->activation_max,
                               .right_shifts = bisup_kernel_gemm_right_shifts(p->multiplier, p->shift, out->depth)};
  const int32_t plane = out->height * out->width, pixels = out->batches * plane;
  const int8_t *row[2] = {NULL, NULL};
  int32_t pending = 0;
  for (int32_t n = 0; n < pixels; ++n) {
    const int32_t b = n / plane, oy = (n % plane) / out->width, ox = n % out->width;
    if (direct) {
      row[pending] = input + offset4(&p->input, b, oy * p->stride_height, ox * p->stride_width, 0);
    } else {
      bisup_kernel_conv_im2col(p, input, b, oy, ox, bisup_kernel_conv_columns[pending]);
      row[pending] = bisup_kernel_conv_columns[pending];
    }
    if (++pending == 2) {
      rows(&g, row[0], row[1], output + (size_t)(n - 1) * out->depth, output + (size_t)n * out->depth);
      pending = 0;
    }
  }
  if (pending) rows(&g, row[0], NULL, output + (size_t)(pixels - 1) * out->depth, NULL);
  return 1;
}

/* The filter taps that fall inside the input along one axis: [*first, *end). */
static void valid_taps(int32_t origin, int32_t dilation, int32_t taps, int32_t size, int32_t *first, int32_t *end) {
  int32_t lo = origin < 0 ? (-origin + dilation - 1) / dilation : 0;
  int32_t hi = size - origin <= 0 ? 0 : (size - origin + dilation - 1) / dilation;
  *first = lo;
  *end = hi < taps ? hi : taps;
}

/* The direct loop, for filters too large for the im2col scratch. A window inside the input takes sum(w)
 * precomputed; one clipped by padding sums the taps it uses. */
static void conv2d_direct(const bisup_kernel_conv_params *p, const int8_t *input, int8_t *output) {
  const bisup_kernel_shape *in = &p->input, *out = &p->output;
  const int32_t depth = in->depth, taps_per_row = p->filter_width * depth, pixel_step = p->dilation_width * depth;
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t oy = 0; oy < out->height; ++oy) {
      const int32_t y0 = oy * p->stride_height - p->pad_height;
      int32_t fy0, fy1;
      valid_taps(y0, p->dilation_height, p->filter_height, in->height, &fy0, &fy1);
      for (int32_t ox = 0; ox < out->width; ++ox) {
        const int32_t x0 = ox * p->stride_width - p->pad_width;
        int32_t fx0, fx1;
        valid_taps(x0, p->dilation_width, p->filter_width, in->width, &fx0, &fx1);
        const int inside = fy0 == 0 && fy1 == p->filter_height && fx0 == 0 && fx1 == p->filter_width;
        int8_t *result = output + offset4(out, b, oy, ox, 0);
        for (int32_t oc = 0; oc < out->depth; ++oc) {
          const int8_t *filter = p->filter + (size_t)oc * p->filter_height * taps_per_row;
          int32_t acc = 0, filter_sum = 0;
          for (int32_t fy = fy0; fy < fy1; ++fy) {
            const int8_t *row = input + offset4(in, b, y0 + p->dilation_height * fy, x0 + p->dilation_width * fx0, 0);
            const int8_t *row_taps = filter + fy * taps_per_row + fx0 * depth;
            for (int32_t fx = 0; fx < fx1 - fx0; ++fx) { /* indices, not pointers run past the end */
              const int8_t *pixel = row + fx * pixel_step, *taps = row_taps + fx * depth;
              for (int32_t ic = 0; ic < depth; ++ic) {
                acc += taps[ic] * pixel[ic];
                filter_sum += taps[ic];
              }
            }
          }
          acc += p->input_offset * (inside ? p->filter_sums[oc] : filter_sum);
          if (p->bias) acc += p->bias[oc];
          result[oc] =
              requantize(acc, p->multiplier[oc], p->shift[oc], p->output_offset, p->activation_min, p->activation_max);
        }
      }
    }
  }
}

void bisup_kernel_conv2d(const bisup_kernel_conv_params *p, const int8_t *input, int8_t *output) {
#if BISUP_KERNEL_MVE
  if (bisup_kernel_conv2d_mve(p, input, output)) return;
#endif
#if BISUP_KERNEL_DSP
  if (bisup_kernel_conv2d_dsp(p, input, output)) return;
#endif
  if (bisup_kernel_conv2d_gemm(p, input, output, bisup_kernel_gemm_rows)) return;
  conv2d_direct(p, input, output);
}
