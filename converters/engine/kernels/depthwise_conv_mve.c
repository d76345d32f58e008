/* bisup int8 kernels: DEPTHWISE_CONV_2D on Helium (MVE, the Cortex-M55), channels across the lanes.
 *
 * Covers depth_multiplier 1 (any filter size, stride, dilation, padding, depth); returns 0 for a larger
 * multiplier, which the portable kernel then runs.
 *
 * Eight channels per pass, as int16 lanes: for each tap of the window that falls inside the input (TFLM skips
 * the others), the input and filter bytes are widened by the load (VLDRB.S16), x + input_offset is exact in
 * int16 (|x + input_offset| <= 255), and VMULLB / VMULLT multiply the even and odd lanes into int32 products
 * (|product| <= 255 x 128), added to two int32 accumulators, so every channel holds TFLM's own int32 sum
 * bias + sum((x + input_offset) * w). A partial last group of channels is predicated (no load or store past
 * the tensors). Requantization four channels at a time (even, then odd) with bisup_kernel_requantize_mve,
 * bit-exact with TFLM's; the two results, within int8, are narrowed back into channel order (VMOVNB/VMOVNT)
 * and stored as eight bytes. Two output pixels a pass (the pixel and the one below) when their windows have the
 * same taps inside the input (every row pair but the first and last rows, mostly): one filter load and one set
 * of requantization constants for both. No scratch. */
#include "bisup_kernel_internal.h"

#if BISUP_KERNEL_MVE
/* The filter taps that fall inside the input along one axis: [*first, *end). */
static void inside_taps(int32_t origin, int32_t dilation, int32_t taps, int32_t size, int32_t *first, int32_t *end) {
  int32_t lo = origin < 0 ? (-origin + dilation - 1) / dilation : 0;
  int32_t hi = size - origin <= 0 ? 0 : (size - origin + dilation - 1) / dilation;
  *first = lo;
  *end = hi < taps ? hi : taps;
}

/* What one pass needs besides its window: the layer's constants, each a local of the caller. */
typedef struct {
  const int32_t *bias, *multiplier, *shift;
  int32_t rows, taps, tap_step, depth, row_step, in_row_step, pixel_step, result_step, output_offset, lo, hi;
  int16_t input_offset;
} pass_params;

/* Four channels' int32 sums, requantized; the result in int16 lanes (even: bottom, odd: top of `into`). */
BISUP_KERNEL_SPECIALISED int16x8_t requantize8(const pass_params *q, int32x4_t even, int32x4_t odd, int32x4_t m_even,
                                               int32x4_t s_even, int32x4_t m_odd, int32x4_t s_odd) {
  even = bisup_kernel_requantize_mve(even, m_even, s_even, q->output_offset, q->lo, q->hi);
  odd = bisup_kernel_requantize_mve(odd, m_odd, s_odd, q->output_offset, q->lo, q->hi);
  return vmovntq_s32(vmovnbq_s32(vdupq_n_s16(0), even), odd); /* both within int8: exact */
}

/* Eight channels (`left` of them real, all eight when `full`: no predicate then) of one output pixel, or of
 * two when `pair` (the pixel below, pixel_step input bytes on, whose window has the same taps inside the input):
 * the window's taps from x_row / w_row on, requantized, stored at result (and result + result_step). Inlined
 * for each (full, pair). */
BISUP_KERNEL_SPECIALISED void channels8(const pass_params *q, const int8_t *x_row, const int8_t *w_row, int32_t c,
                                        int32_t left, int full, int pair, int8_t *result) {
  const uint32x4_t even = vidupq_n_u32(0, 2), odd = vidupq_n_u32(1, 2); /* channel c + 0, 2, 4, 6 / 1, 3, 5, 7 */
  const mve_pred16_t lanes = full ? 0xffff : vctp16q((uint32_t)left);
  const mve_pred16_t pe = full ? 0xffff : vcmpltq_n_s32(vreinterpretq_s32_u32(even), left);
  const mve_pred16_t po = full ? 0xffff : vcmpltq_n_s32(vreinterpretq_s32_u32(odd), left);
  int32x4_t acc_even = vdupq_n_s32(0), acc_odd = vdupq_n_s32(0);
  if (q->bias) {
    acc_even = full ? vldrwq_gather_shifted_offset_s32(q->bias + c, even)
                    : vldrwq_gather_shifted_offset_z_s32(q->bias + c, even, pe);
    acc_odd = full ? vldrwq_gather_shifted_offset_s32(q->bias + c, odd)
                   : vldrwq_gather_shifted_offset_z_s32(q->bias + c, odd, po);
  }
  int32x4_t acc_even1 = acc_even, acc_odd1 = acc_odd;
  for (int32_t r = 0; r < q->rows; ++r, x_row += q->in_row_step, w_row += q->row_step) {
    const int8_t *x = x_row, *w = w_row;
    for (int32_t t = 0; t < q->taps; ++t, x += q->tap_step, w += q->depth) {
      const int16x8_t ws = full ? vldrbq_s16(w) : vldrbq_z_s16(w, lanes);
      const int16x8_t xs = vaddq_n_s16(full ? vldrbq_s16(x) : vldrbq_z_s16(x, lanes), q->input_offset);
      acc_even = vaddq_s32(acc_even, vmullbq_int_s16(xs, ws));
      acc_odd = vaddq_s32(acc_odd, vmulltq_int_s16(xs, ws));
      if (pair) {
        const int8_t *x1 = x + q->pixel_step;
        const int16x8_t xs1 = vaddq_n_s16(full ? vldrbq_s16(x1) : vldrbq_z_s16(x1, lanes), q->input_offset);
        acc_even1 = vaddq_s32(acc_even1, vmullbq_int_s16(xs1, ws));
        acc_odd1 = vaddq_s32(acc_odd1, vmulltq_int_s16(xs1, ws));
      }
    }
  }
  const int32x4_t m_even = full ? vldrwq_gather_shifted_offset_s32(q->multiplier + c, even)
                                : vldrwq_gather_shifted_offset_z_s32(q->multiplier + c, even, pe);
  const int32x4_t s_even = full ? vldrwq_gather_shifted_offset_s32(q->shift + c, even)
                                : vldrwq_gather_shifted_offset_z_s32(q->shift + c, even, pe);
  const int32x4_t m_odd = full ? vldrwq_gather_shifted_offset_s32(q->multiplier + c, odd)
                               : vldrwq_gather_shifted_offset_z_s32(q->multiplier + c, odd, po);
  const int32x4_t s_odd = full ? vldrwq_gather_shifted_offset_s32(q->shift + c, odd)
                               : vldrwq_gather_shifted_offset_z_s32(q->shift + c, odd, po);
  const int16x8_t narrow = requantize8(q, acc_even, acc_odd, m_even, s_even, m_odd, s_odd);
  if (full) {
    vstrbq_s16(result + c, narrow);
  } else {
    vstrbq_p_s16(result + c, narrow, lanes);
  }
  if (pair) {
    const int16x8_t narrow1 = requantize8(q, acc_even1, acc_odd1, m_even, s_even, m_odd, s_odd);
    if (full) {
      vstrbq_s16(result + q->result_step + c, narrow1);
    } else {
      vstrbq_p_s16(result + q->result_step + c, narrow1, lanes);
    }
  }
}

/* The predicated tail of a pixel's channels, one copy for every call. */
static void channels8_tail(const pass_params *q, const int8_t *x_row, const int8_t *w_row, int32_t c, int32_t left,
                           int8_t *result) {
  channels8(q, x_row, w_row, c, left, 0, 0, result);
}

int bisup_kernel_depthwise_conv2d_mve(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output) {
  if (p->depth_multiplier != 1) return 0;
  /* Every field a local: a store through int8_t * could alias *p, which would reload them all per store. */
  const bisup_kernel_shape in = p->input, out = p->output;
  const int32_t depth = in.depth, filter_width = p->filter_width, filter_height = p->filter_height;
  const int32_t dilation_height = p->dilation_height, dilation_width = p->dilation_width;
  const int32_t stride_height = p->stride_height, stride_width = p->stride_width;
  const int32_t pad_height = p->pad_height, pad_width = p->pad_width;
  const int16_t input_offset = (int16_t)p->input_offset;
  const int32_t output_offset = p->output_offset, lo = p->activation_min, hi = p->activation_max;
  const int8_t *filter = p->filter;
  pass_params q = {.bias = p->bias, .multiplier = p->multiplier, .shift = p->shift, .tap_step = dilation_width * depth,
                   .depth = depth, .row_step = filter_width * depth, .in_row_step = dilation_height * in.width * depth,
                   .pixel_step = stride_height * in.width * depth,
                   .result_step = out.width * depth,
                   .output_offset = output_offset, .lo = lo, .hi = hi, .input_offset = input_offset};
  for (int32_t b = 0; b < out.batches; ++b) {
    for (int32_t oy = 0; oy < out.height;) {
      const int32_t y0 = oy * stride_height - pad_height;
      int32_t fy0, fy1, next0 = -1, next1 = -1;
      inside_taps(y0, dilation_height, filter_height, in.height, &fy0, &fy1);
      if (oy + 1 < out.height) {
        inside_taps(y0 + stride_height, dilation_height, filter_height, in.height, &next0, &next1);
      }
      const int pair = next0 == fy0 && next1 == fy1; /* the pixels below have windows with the same taps inside */
      q.rows = fy1 - fy0;
      for (int32_t ox = 0; ox < out.width; ++ox) {
        const int32_t x0 = ox * stride_width - pad_width;
        int32_t fx0, fx1;
        inside_taps(x0, dilation_width, filter_width, in.width, &fx0, &fx1);
        q.taps = fx1 - fx0;
        const int8_t *window = input + offset4(&in, b, y0 + dilation_height * fy0, x0 + dilation_width * fx0, 0);
        const int8_t *filter_taps = filter + (size_t)fy0 * q.row_step + fx0 * depth;
        int8_t *result = output + offset4(&out, b, oy, ox, 0);
        int32_t c = 0;
        if (pair) {
          for (; c + 8 <= depth; c += 8) channels8(&q, window + c, filter_taps + c, c, 8, 1, 1, result);
          if (c < depth) { /* the predicated tail one pixel at a time: less code */
            channels8_tail(&q, window + c, filter_taps + c, c, depth - c, result);
            channels8_tail(&q, window + q.pixel_step + c, filter_taps + c, c, depth - c, result + q.result_step);
          }
        } else {
          for (; c + 8 <= depth; c += 8) channels8(&q, window + c, filter_taps + c, c, 8, 1, 0, result);
          if (c < depth) channels8_tail(&q, window + c, filter_taps + c, c, depth - c, result);
        }
      }
      oy += pair ? 2 : 1;
    }
  }
  return 1;
}
#else
typedef int bisup_kernel_depthwise_conv_mve_unused; /* ISO C: a translation unit is not empty */
#endif
