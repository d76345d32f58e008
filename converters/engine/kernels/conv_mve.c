/* bisup int8 kernels: CONV_2D on Helium (MVE, the Cortex-M55), a matrix product of pixels by filters.
 *
 * Covers every CONV_2D whose window fits the im2col buffer (K = filter_height x filter_width x input depth <=
 * BISUP_KERNEL_MVE_IM2COL_BYTES) and whose input zero point is an int8 (-input_offset in [-128, 127]: always so
 * for a TFLite int8 tensor), and every 1x1 convolution without padding (any depth: no copy, the input pixels
 * are the rows). Returns 0 for anything else, which the portable kernel then runs.
 *
 * Arithmetic, the same integers as TFLM's sum(w * (x + input_offset)) + bias:
 * - each output pixel's window is one row of K int8 values, either the input pixel itself (1x1, no padding) or
 *   copied into the static im2col buffer, where a tap outside the input is the input zero point
 *   (x + input_offset = 0 there, so it adds nothing, as TFLM's skipped tap); a window wholly inside the input
 *   (dilation 1 across) is copied as filter_height runs of filter_width x depth contiguous bytes, without the
 *   border arithmetic, whole vectors only when a run is a multiple of 16 bytes;
 * - the filter of an output channel is a row of K int8 values as stored ([oc][fh][fw][ic]);
 * - acc = sum(w * x) (VMLADAVA: 16 int8 products summed into an int32 per instruction, the last partial vector
 *   zero-filled by a tail predicate) + input_offset * filter_sums[oc] + bias[oc]: exact integer algebra (every
 *   window is a full window once padded with the zero point);
 * - output channels in groups of four outer, pixels inner (a group's filters, offset term, multipliers and
 *   shifts loaded once for all the pixels the buffer holds, or the whole image for a 1x1 at stride 1), one
 *   pixel by four channels a pass; a partial last group repeats the last filter and stores only its real lanes;
 * - requantization four channels at a time with bisup_kernel_requantize_split_mve, bit-exact with TFLM's.
 *
 * Scratch: a static im2col buffer of BISUP_KERNEL_MVE_IM2COL_BYTES (2 KB of RAM; floor(2048 / K) pixels at a
 * time), only on MVE builds; the kernels run one at a time, never re-entrantly. */
#include "bisup_kernel_internal.h"

#if BISUP_KERNEL_MVE
#define BISUP_KERNEL_MVE_IM2COL_BYTES 2048

static int8_t im2col_rows[BISUP_KERNEL_MVE_IM2COL_BYTES];

/* The layer's geometry for im2col, locals of the caller (a store through int8_t * could alias *p). */
typedef struct {
  const int8_t *input;
  int32_t height, width, depth, filter_height, filter_width, stride_height, stride_width, pad_height, pad_width;
  int32_t dilation_height, dilation_width, row_bytes, image_bytes;
  int8_t pad;
} im2col_params;

/* n bytes from src to dst: full vectors, then one predicated store of the n % 16 left. */
BISUP_KERNEL_SPECIALISED void copy_bytes(int8_t *dst, const int8_t *src, int32_t n) {
  int32_t i = 0;
  for (; i + 16 <= n; i += 16) vst1q_s8(dst + i, vld1q_s8(src + i));
  if (i < n) {
    const mve_pred16_t lanes = vctp8q((uint32_t)(n - i));
    vstrbq_p_s8(dst + i, vldrbq_z_s8(src + i, lanes), lanes);
  }
}

BISUP_KERNEL_SPECIALISED void fill_bytes(int8_t *dst, int8x16_t value, int32_t n) {
  int32_t i = 0;
  for (; i + 16 <= n; i += 16) vst1q_s8(dst + i, value);
  if (i < n) vstrbq_p_s8(dst + i, value, vctp8q((uint32_t)(n - i)));
}

/* `lines` runs of vectors x 16 bytes, line_step apart, from src to dst one after another. */
BISUP_KERNEL_SPECIALISED void copy_lines16(int8_t *dst, const int8_t *src, int32_t lines, int32_t line_step,
                                           int32_t vectors) {
  for (int32_t l = 0; l < lines; ++l, src += line_step) {
    const int8_t *s = src;
    for (int32_t i = 0; i < vectors; ++i, s += 16, dst += 16) vst1q_s8(dst, vld1q_s8(s));
  }
}

/* The window of output pixel (b, oy, ox) as one row of K values, padding = the input zero point. Addresses
 * are formed only for taps inside the input. */
static const int8_t *im2col(const im2col_params *g, int32_t b, int32_t oy, int32_t ox, int8_t *row) {
  const int32_t depth = g->depth, row_bytes = g->row_bytes;
  const int32_t y0 = oy * g->stride_height - g->pad_height, x0 = ox * g->stride_width - g->pad_width;
  const int8x16_t pad = vdupq_n_s8(g->pad);
  const int8_t *image = g->input + (size_t)b * g->image_bytes;
  /* With dilation 1 the taps inside the input are one run [fx0, fx1) of each row: pad, copy, pad. */
  int32_t fx0 = x0 < 0 ? -x0 : 0, fx1 = g->width - x0 < g->filter_width ? g->width - x0 : g->filter_width;
  if (fx0 > g->filter_width) fx0 = g->filter_width; /* a window wholly outside: all padding */
  if (fx1 < fx0) fx1 = fx0;
  const int32_t before = fx0 * depth, run = (fx1 - fx0) * depth, after = row_bytes - before - run;
  int8_t *dst = row;
  if (g->dilation_width == 1 && run == row_bytes) { /* the window inside the input across: whole rows */
    for (int32_t fy = 0, iy = y0; fy < g->filter_height; ++fy, iy += g->dilation_height, dst += row_bytes) {
      if (iy < 0 || iy >= g->height) {
        fill_bytes(dst, pad, row_bytes);
      } else {
        copy_bytes(dst, image + (iy * g->width + x0) * depth, row_bytes);
      }
    }
    return row;
  }
  for (int32_t fy = 0, iy = y0; fy < g->filter_height; ++fy, iy += g->dilation_height, dst += row_bytes) {
    if (iy < 0 || iy >= g->height) {
      fill_bytes(dst, pad, row_bytes);
    } else if (g->dilation_width == 1) {
      if (before) fill_bytes(dst, pad, before);
      if (run) copy_bytes(dst + before, image + (iy * g->width + x0 + fx0) * depth, run);
      if (after) fill_bytes(dst + before + run, pad, after);
    } else {
      for (int32_t fx = 0, ix = x0; fx < g->filter_width; ++fx, ix += g->dilation_width) {
        if (ix < 0 || ix >= g->width) {
          fill_bytes(dst + fx * depth, pad, depth);
        } else {
          copy_bytes(dst + fx * depth, image + (iy * g->width + ix) * depth, depth);
        }
      }
    }
  }
  return row;
}

/* The layer's constants a pass needs, locals of the caller (a store through int8_t * could alias *p). */
typedef struct {
  const int8_t *filter;
  const int32_t *bias, *filter_sums, *multiplier, *shift;
  int32_t channels, input_offset, output_offset, lo, hi;
} pass_params;

/* Output channels oc .. oc + 3 of `count` pixels: pixel j's row of k values at a + j x a_step, its outputs at
 * out + j x out_step (+ oc). `full`: all four channels exist; else the last filter repeats and only the real
 * lanes are stored. The group's filters, offset term, multipliers and split shifts stay in registers across
 * the pixels; one pixel a pass (the four dot products' accumulators and six pointers fill the core registers).
 * Inlined twice: with and without the predicates. */
BISUP_KERNEL_SPECIALISED void rows_channels4(const pass_params *q, const int8_t *a, int32_t a_step, int32_t count,
                                             int32_t k, int32_t oc, int full, int8_t *out, int32_t out_step) {
  const int32_t last = q->channels - 1;
  const int8_t *w0 = q->filter + (size_t)oc * k, *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;
  if (!full) {
    w1 = q->filter + (size_t)(oc + 1 < last ? oc + 1 : last) * k;
    w2 = q->filter + (size_t)(oc + 2 < last ? oc + 2 : last) * k;
    w3 = q->filter + (size_t)(oc + 3 < last ? oc + 3 : last) * k;
  }
  const mve_pred16_t lanes = full ? 0xffff : vctp32q((uint32_t)(q->channels - oc));
  const mve_pred16_t tail = vctp8q((uint32_t)(k & 15));
  int32x4_t base = full ? vldrwq_s32(q->filter_sums + oc) : vldrwq_z_s32(q->filter_sums + oc, lanes);
  base = vmulq_n_s32(base, q->input_offset);
  if (q->bias) base = vaddq_s32(base, full ? vldrwq_s32(q->bias + oc) : vldrwq_z_s32(q->bias + oc, lanes));
  const int32x4_t multiplier = full ? vldrwq_s32(q->multiplier + oc) : vldrwq_z_s32(q->multiplier + oc, lanes);
  const int32x4_t shift = full ? vldrwq_s32(q->shift + oc) : vldrwq_z_s32(q->shift + oc, lanes);
  const int32x4_t left = vmaxq_s32(shift, vdupq_n_s32(0)), right = vminq_s32(shift, vdupq_n_s32(0));
  out += oc;
  for (int32_t j = 0; j < count; ++j, a += a_step, out += out_step) {
    int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, i = 0;
    for (; i + 16 <= k; i += 16) {
      const int8x16_t x = vld1q_s8(a + i);
      s0 = vmladavaq_s8(s0, x, vld1q_s8(w0 + i));
      s1 = vmladavaq_s8(s1, x, vld1q_s8(w1 + i));
      s2 = vmladavaq_s8(s2, x, vld1q_s8(w2 + i));
      s3 = vmladavaq_s8(s3, x, vld1q_s8(w3 + i));
    }
    if (i < k) {
      const int8x16_t x = vldrbq_z_s8(a + i, tail);
      s0 = vmladavaq_s8(s0, x, vldrbq_z_s8(w0 + i, tail));
      s1 = vmladavaq_s8(s1, x, vldrbq_z_s8(w1 + i, tail));
      s2 = vmladavaq_s8(s2, x, vldrbq_z_s8(w2 + i, tail));
      s3 = vmladavaq_s8(s3, x, vldrbq_z_s8(w3 + i, tail));
    }
    int32x4_t acc = vsetq_lane_s32(s3, vsetq_lane_s32(s2, vsetq_lane_s32(s1, vdupq_n_s32(s0), 1), 2), 3);
    acc = bisup_kernel_requantize_split_mve(vaddq_s32(acc, base), multiplier, left, right, q->output_offset, q->lo,
                                            q->hi);
    if (full) {
      vstrbq_s32(out, acc);
    } else {
      vstrbq_p_s32(out, acc, lanes);
    }
  }
}

/* Every output channel of `count` pixels (rows and outputs as rows_channels4 takes them). */
static void rows(const pass_params *q, const int8_t *a, int32_t a_step, int32_t count, int32_t k, int8_t *out,
                 int32_t out_step) {
  int32_t oc = 0;
  for (; oc + 4 <= q->channels; oc += 4) rows_channels4(q, a, a_step, count, k, oc, 1, out, out_step);
  if (oc < q->channels) rows_channels4(q, a, a_step, count, k, oc, 0, out, out_step);
}

int bisup_kernel_conv2d_mve(const bisup_kernel_conv_params *p, const int8_t *input, int8_t *output) {
  const bisup_kernel_shape *in = &p->input, *out = &p->output;
  const int direct = p->filter_height == 1 && p->filter_width == 1 && p->pad_height == 0 && p->pad_width == 0;
  const int32_t k = p->filter_height * p->filter_width * in->depth, pixels = out->height * out->width;
  if (!direct && (k > BISUP_KERNEL_MVE_IM2COL_BYTES || p->input_offset < -127 || p->input_offset > 128)) return 0;
  const pass_params q = {.filter = p->filter, .bias = p->bias, .filter_sums = p->filter_sums,
                         .multiplier = p->multiplier, .shift = p->shift, .channels = out->depth,
                         .input_offset = p->input_offset, .output_offset = p->output_offset,
                         .lo = p->activation_min, .hi = p->activation_max};
  const im2col_params g = {.input = input, .height = in->height, .width = in->width, .depth = in->depth,
                           .filter_height = p->filter_height, .filter_width = p->filter_width,
                           .stride_height = p->stride_height, .stride_width = p->stride_width,
                           .pad_height = p->pad_height, .pad_width = p->pad_width,
                           .dilation_height = p->dilation_height, .dilation_width = p->dilation_width,
                           .row_bytes = p->filter_width * in->depth,
                           .image_bytes = in->height * in->width * in->depth,
                           .pad = (int8_t)(-p->input_offset)};
  const int32_t channels = out->depth;
  if (direct) { /* each output line's pixels are input pixels stride_width apart */
    const int32_t step = p->stride_width * in->depth;
    if (p->stride_height == 1 && p->stride_width == 1) { /* the image is one run of pixels */
      rows(&q, input, in->depth, out->batches * pixels, k, output, channels);
      return 1;
    }
    for (int32_t b = 0; b < out->batches; ++b) {
      for (int32_t oy = 0; oy < out->height; ++oy) {
        rows(&q, input + offset4(in, b, oy * p->stride_height, 0, 0), step, out->width, k,
             output + offset4(out, b, oy, 0, 0), channels);
      }
    }
    return 1;
  }
  /* im2col: as many pixels' windows as the rows hold, then every output channel of them. A window wholly
   * inside the input (dilation 1 across) is filter_height runs of filter_width x depth contiguous bytes:
   * copied without the border arithmetic. */
  const int32_t block = (int32_t)sizeof im2col_rows / k, out_width = out->width;
  const int32_t ox_lo = (p->pad_width + p->stride_width - 1) / p->stride_width;
  const int32_t reach = in->width + p->pad_width - p->filter_width;
  int32_t ox_hi = reach < 0 ? 0 : reach / p->stride_width + 1;
  if (ox_hi > out_width) ox_hi = out_width;
  if (p->dilation_width != 1) ox_hi = 0; /* no run is contiguous: every window through im2col() */
  const int32_t line_step = p->dilation_height * in->width * in->depth, row_bytes = g.row_bytes;
  const int32_t y_last = (p->filter_height - 1) * p->dilation_height;
  for (int32_t b = 0; b < out->batches; ++b) {
    const int8_t *image = input + (size_t)b * g.image_bytes;
    int32_t oy = 0, ox = 0;
    for (int32_t t = 0; t < pixels; t += block) {
      const int32_t count = pixels - t < block ? pixels - t : block;
      for (int32_t j = 0; j < count; ++j) {
        int8_t *dst = im2col_rows + j * k;
        const int32_t y0 = oy * p->stride_height - p->pad_height;
        if (ox >= ox_lo && ox < ox_hi && y0 >= 0 && y0 + y_last < in->height) {
          const int8_t *src = image + ((size_t)y0 * in->width + ox * p->stride_width - p->pad_width) * in->depth;
          if (row_bytes % 16 == 0) {
            copy_lines16(dst, src, p->filter_height, line_step, row_bytes / 16);
          } else {
            for (int32_t fy = 0; fy < p->filter_height; ++fy, src += line_step, dst += row_bytes) {
              copy_bytes(dst, src, row_bytes);
            }
          }
        } else {
          im2col(&g, b, oy, ox, dst);
        }
        if (++ox == out_width) {
          ox = 0;
          ++oy;
        }
      }
      rows(&q, im2col_rows, k, count, k, output + ((size_t)b * pixels + t) * channels, channels);
    }
  }
  return 1;
}
#else
typedef int bisup_kernel_conv_mve_unused; /* ISO C: a translation unit is not empty */
#endif
