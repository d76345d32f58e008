/*
 * bisup int8 kernels: DEPTHWISE_CONV_2D with the Cortex-M DSP extension (ARMv7E-M, ARMv8-M Mainline: M4, M7, M33).
 *
 * Covers depth multiplier 1, depth >= 4 and an input zero point in int8 (every TFLM int8 model); any filter size,
 * stride, dilation, padding, batch. Returns 0 for anything else (depthwise_conv.c runs it).
 *
 * Output pixels outside, channels inside, four adjacent channels per pass: their input bytes and their filter
 * bytes are one 32-bit word each (read with memcpy: an unaligned LDR). SXTAB16 splits the input word into its even
 * and odd channels as int16 pairs and adds input_offset to each in the same instruction (|x + offset| <= 255 fits);
 * SXTB16 splits the filter word; SMLABB / SMLATT add one channel's product each into four int32 accumulators that
 * start from the bias: TFLM's sum(w * (x + input_offset)) + bias, in TFLM's int32. Pixels loop over the taps inside
 * the input only (TFLM's padding: the others add nothing). The last depth % 4 channels go one by one.
 *
 * A 3 x 3 filter (with filter_pairs and interior_bias from the lowering, up to BISUP_DW_DSP_WINDOW_DEPTH channels,
 * a layer whose requantization takes the short form below) has its own path: every window of nine taps read at
 * x + fy row + fx col (interior pixels in place, border pixels from a copy of their window that holds the input's
 * zero point outside the input), the sums starting from interior_bias so that the taps need no input_offset, the
 * filter's int16 pairs (filter_pairs) read in order, the requantization bisup_kernel_requantize_short.
 *
 * Requantization: when every accumulator of the layer, after its channel's left shift, is below 2^30 in magnitude
 * (checked once per call from the biases, the tap count and the shifts; true of real models), srdhm is one SMMULR of
 * twice the accumulator (floor((2ab + 2^31) / 2^32) = floor((ab + 2^30) / 2^31), as in mbqm_fast) and the rounding
 * divide is mbqm_fast's; otherwise mbqm_fast itself. No scratch memory but the border window.
 */
#include "bisup_kernel_internal.h"

#if BISUP_KERNEL_DSP
#include <arm_acle.h>
#include <string.h>

#define BISUP_DW_DSP_WINDOW_DEPTH 256 /* the 3 x 3 path's copy of a border window: 2.3 KB of static RAM */

static inline int32_t word(const int8_t *p) {
  int32_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* The odd bytes of x as two int16, each plus the matching half of a: SXTAB16 with its rotation (GCC 12's
 * arm_acle.h has no __ror to fold into it). */
static inline int32_t sxtab16_ror8(int32_t a, int32_t x) {
  int32_t r;
  __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(x));
  return r;
}

static inline int32_t sxtb16_ror8(int32_t x) {
  int32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
  return r;
}

/* One tap of four channels: input word xv (plus the offset pair off2), filter word wv, into a0..a3. */
#define BISUP_DW_TAP(xv, wv)                                \
  do {                                                      \
    const int32_t x_ = (xv), w_ = (wv);                     \
    const int32_t x02 = __sxtab16(off2, x_), w02 = __sxtb16(w_); \
    const int32_t x13 = sxtab16_ror8(off2, x_);             \
    const int32_t w13 = sxtb16_ror8(w_);                    \
    a0 = __smlabb(x02, w02, a0);                            \
    a2 = __smlatt(x02, w02, a2);                            \
    a1 = __smlabb(x13, w13, a1);                            \
    a3 = __smlatt(x13, w13, a3);                            \
  } while (0)

typedef struct {
  const int32_t *multiplier, *shift;
  int32_t output_offset, lo, hi;
  int small; /* every accumulator, after its left shift, below 2^30 in magnitude */
  int right;  /* small, and every shift < 0 (a right shift) */
} requant;

static inline int8_t output_of(const requant *r, int32_t acc, int32_t c) {
  const int32_t m = r->multiplier[c], s = r->shift[c];
  int32_t v;
  if (r->right) {
    int32_t h = bisup_kernel_smmulr(acc * 2, m);
    h += h >> 31;
    v = ((h >> (-s - 1)) + 1) >> 1;
  } else if (!r->small) {
    v = mbqm_fast(acc, m, s);
  } else if (s >= 0) {
    v = bisup_kernel_smmulr((int32_t)((uint32_t)acc << (s + 1)), m);
  } else {
    int32_t h = bisup_kernel_smmulr(acc * 2, m);
    h += h >> 31;
    v = ((h >> (-s - 1)) + 1) >> 1;
  }
  return (int8_t)clamp32(v + r->output_offset, r->lo, r->hi);
}

static inline int32_t bias_of(const bisup_kernel_depthwise_params *p, int32_t c) { return p->bias ? p->bias[c] : 0; }

/* Channels c0 and up of output pixel o, from the taps [fy0, fy1) x [fx0, fx1) of a window whose tap (fy0, fx0) is
 * at x (channel 0). */
static void pixel_taps(const bisup_kernel_depthwise_params *p, const requant *r, int32_t off2, const int8_t *x,
                       int8_t *restrict o, int32_t fy0, int32_t fy1, int32_t fx0, int32_t fx1, int32_t c0) {
  const int32_t depth = p->output.depth, fw = p->filter_width;
  const int32_t row = p->dilation_height * p->input.width * depth, col = p->dilation_width * depth;
  int32_t c = c0;
  for (; c + 4 <= depth; c += 4) {
    int32_t a0 = bias_of(p, c), a1 = bias_of(p, c + 1), a2 = bias_of(p, c + 2), a3 = bias_of(p, c + 3);
    const int8_t *v = x + c;
    for (int32_t fy = fy0; fy < fy1; ++fy, v += row) {
      const int8_t *w = p->filter + (fy * fw + fx0) * depth + c, *u = v;
      for (int32_t fx = fx0; fx < fx1; ++fx, u += col, w += depth) BISUP_DW_TAP(word(u), word(w));
    }
    o[c] = output_of(r, a0, c);
    o[c + 1] = output_of(r, a1, c + 1);
    o[c + 2] = output_of(r, a2, c + 2);
    o[c + 3] = output_of(r, a3, c + 3);
  }
  for (; c < depth; ++c) {
    int32_t a = 0;
    const int8_t *v = x + c;
    for (int32_t fy = fy0; fy < fy1; ++fy, v += row) {
      const int8_t *w = p->filter + (fy * fw + fx0) * depth + c, *u = v;
      for (int32_t fx = fx0; fx < fx1; ++fx, u += col, w += depth) a += *w * (*u + p->input_offset);
    }
    o[c] = output_of(r, a + bias_of(p, c), c);
  }
}

/* One tap of four channels in taps_3x3: the input word at ADDR, the filter pairs at w (then w += 8). */
#define BISUP_DW_TAP_ASM(ADDR)                    \
  "ldr    %[v], " ADDR "\n\t"                     \
  "ldrd   %[wa], %[wb], [%[w]], #8\n\t"           \
  "sxtb16 %[e], %[v]\n\t"                         \
  "sxtb16 %[v], %[v], ror #8\n\t"                 \
  "smlabb %[a0], %[e], %[wa], %[a0]\n\t"          \
  "smlatt %[a2], %[e], %[wa], %[a2]\n\t"          \
  "smlabb %[a1], %[v], %[wb], %[a1]\n\t"          \
  "smlatt %[a3], %[v], %[wb], %[a3]\n\t"

/* One channel's requantization in pixel_3x3: A = 2 acc (the doubled sums), the next pair of the group's words
 * (multiplier, e1 = -shift - 1) from w, offset21 = 2 output_offset + 1 in v: bisup_kernel_requantize_short with
 * its doubling done by the weights and the start, and its clamp to all of int8. */
#define BISUP_DW_REQUANT_ASM(A)                 \
  "ldrd   %[wa], %[wb], [%[w]], #8\n\t"         \
  "smmulr " A ", " A ", %[wa]\n\t"              \
  "add    " A ", " A ", " A ", asr #31\n\t"     \
  "asr    " A ", " A ", %[wb]\n\t"              \
  "add    " A ", " A ", %[v]\n\t"               \
  "ssat   " A ", #8, " A ", asr #1\n\t"

/* The four bytes' clamp to [lo, hi] (lo4, hi4 in q: the bounds in each byte) where the activation range is not all
 * of int8: SSUB8 sets each byte's GE flag, SEL keeps the larger, then the smaller. */
#define BISUP_DW_CLAMP_ASM                      \
  "ldrd   %[wa], %[wb], [%[q], #8]\n\t"         \
  "ssub8  %[v], %[a0], %[wa]\n\t"               \
  "sel    %[a0], %[a0], %[wa]\n\t"              \
  "ssub8  %[v], %[wb], %[a0]\n\t"               \
  "sel    %[a0], %[a0], %[wb]\n\t"

/* What pixel_3x3 reads from memory besides its operands (fourteen registers would not leave GCC enough). */
typedef struct {
  int32_t row, offset21, lo4, hi4; /* lo4 / hi4: activation_min / max in each byte */
  const int8_t *end;               /* the output pixel's last group of four channels, plus 4 */
} pass_3x3;

/* The pixel's groups of four channels, the asm loop (volatile: it returns nothing but its stores): each starts from
 * the group's doubled interior_bias, adds the nine taps (tap (fy, fx) at x + fy row + fx col, c + 4g), each a LDR,
 * two SXTB16, a LDRD of the doubled weights and four SMLAxy, requantizes the four sums and stores them as one word.
 * 113 instructions for 36 multiply-accumulates (118 with the clamp); GCC's C around the taps took 144.
 * filter_pairs' 30 words per group: the doubled interior_bias (4), the doubled filter pairs (18), (multiplier, e1)
 * per channel (8). */
BISUP_KERNEL_SPECIALISED void groups_3x3(const int8_t *x, int32_t col, const int32_t *w, int8_t *o,
                                         const pass_3x3 *q, int clamp) {
  int32_t a0, a1, a2, a3, v, e, wa, wb;
#define BISUP_DW_PIXEL_ASM(CLAMP)                                                                                 \
  __asm__ volatile("1:\n\t"                                                                                       \
          "ldrd   %[a0], %[a1], [%[w]], #8\n\t"                                                                   \
          "ldrd   %[a2], %[a3], [%[w]], #8\n\t"                                                                   \
          BISUP_DW_TAP_ASM("[%[x]]") BISUP_DW_TAP_ASM("[%[x], %[col]]") BISUP_DW_TAP_ASM("[%[x], %[col], lsl #1]")  \
          "ldr    %[v], [%[q]]\n\t"                                                                               \
          "add    %[x], %[x], %[v]\n\t"                                                                           \
          BISUP_DW_TAP_ASM("[%[x]]") BISUP_DW_TAP_ASM("[%[x], %[col]]") BISUP_DW_TAP_ASM("[%[x], %[col], lsl #1]")  \
          "ldr    %[v], [%[q]]\n\t"                                                                               \
          "add    %[x], %[x], %[v]\n\t"                                                                           \
          BISUP_DW_TAP_ASM("[%[x]]") BISUP_DW_TAP_ASM("[%[x], %[col]]") BISUP_DW_TAP_ASM("[%[x], %[col], lsl #1]")  \
          "ldr    %[v], [%[q]]\n\t"                                                                               \
          "sub    %[x], %[x], %[v], lsl #1\n\t"                                                                   \
          "add    %[x], %[x], #4\n\t"                                                                             \
          "ldr    %[v], [%[q], #4]\n\t"                                                                           \
          BISUP_DW_REQUANT_ASM("%[a0]") BISUP_DW_REQUANT_ASM("%[a1]") BISUP_DW_REQUANT_ASM("%[a2]")               \
          BISUP_DW_REQUANT_ASM("%[a3]")                                                                           \
          "bfi    %[a0], %[a1], #8, #8\n\t"                                                                       \
          "bfi    %[a0], %[a2], #16, #8\n\t"                                                                      \
          "bfi    %[a0], %[a3], #24, #8\n\t"                                                                      \
          CLAMP                                                                                                   \
          "str    %[a0], [%[o]], #4\n\t"                                                                          \
          "ldr    %[v], [%[q], #16]\n\t"                                                                          \
          "cmp    %[o], %[v]\n\t"                                                                                 \
          "bne    1b"                                                                                             \
          : [a0] "=&r"(a0), [a1] "=&r"(a1), [a2] "=&r"(a2), [a3] "=&r"(a3), [x] "+r"(x), [w] "+r"(w), [o] "+r"(o), \
            [v] "=&r"(v), [e] "=&r"(e), [wa] "=&r"(wa), [wb] "=&r"(wb)                                            \
          : [col] "r"(col), [q] "r"(q)                                                                            \
          : "cc", "memory")
  if (clamp) {
    BISUP_DW_PIXEL_ASM(BISUP_DW_CLAMP_ASM);
  } else {
    BISUP_DW_PIXEL_ASM("");
  }
#undef BISUP_DW_PIXEL_ASM
}

/* Every channel of an output pixel of a 3 x 3 filter (filter_pairs, a layer passing the short requantization), its
 * tap (fy, fx) at x + fy q->row + fx col: groups_3x3, then the last depth % 4 channels one by one. clamp: the
 * activation range is not all of int8. */
BISUP_KERNEL_SPECIALISED void pixel_3x3(const bisup_kernel_depthwise_params *p, const int8_t *x, int32_t col,
                                        int8_t *restrict o, pass_3x3 *q, int clamp) {
  const int32_t depth = p->output.depth, c4 = depth & ~3;
  if (c4 > 0) {
    q->end = o + c4;
    groups_3x3(x, col, p->filter_pairs, o, q, clamp);
  }
  for (int32_t c = c4; c < depth; ++c) {
    int32_t a = p->interior_bias[c];
    for (int32_t t = 0; t < 9; ++t) a += p->filter[t * depth + c] * x[(t / 3) * q->row + (t % 3) * col + c];
    o[c] = bisup_kernel_requantize_short(a, p->multiplier[c], ~p->shift[c], q->offset21, p->activation_min,
                                         p->activation_max, !clamp);
  }
}

/* Output pixel (b, oy, ox)'s 3 x 3 window into win ([3][3][depth]), the input's zero point for taps outside the
 * input (x + input_offset = 0: they add nothing, as TFLM's padding). */
static void window_3x3(const bisup_kernel_depthwise_params *p, const int8_t *input, int32_t b, int32_t oy,
                       int32_t ox, int8_t *win) {
  const bisup_kernel_shape *in = &p->input;
  const int32_t y0 = oy * p->stride_height - p->pad_height, x0 = ox * p->stride_width - p->pad_width;
  for (int32_t fy = 0; fy < 3; ++fy) {
    const int32_t y = y0 + fy * p->dilation_height;
    for (int32_t fx = 0; fx < 3; ++fx, win += in->depth) {
      const int32_t x = x0 + fx * p->dilation_width;
      if (y >= 0 && y < in->height && x >= 0 && x < in->width) {
        memcpy(win, input + offset4(in, b, y, x, 0), (size_t)in->depth);
      } else {
        memset(win, -p->input_offset, (size_t)in->depth);
      }
    }
  }
}

static int8_t win[9 * BISUP_DW_DSP_WINDOW_DEPTH];

/* The output pixels of row (b, oy) outside [skip0, skip1) (the interior run, if skip0 < skip1), each from a copy
 * of its window (window_3x3): the border pixels. One call a row, so that its pixel_3x3 is inlined once. */
BISUP_KERNEL_SPECIALISED void border_3x3(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output,
                                         int32_t b, int32_t oy, int32_t skip0, int32_t skip1, pass_3x3 *q, int clamp) {
  q->row = 3 * p->input.depth;
  for (int32_t ox = 0; ox < p->output.width; ++ox) {
    if (ox == skip0 && skip0 < skip1) {
      ox = skip1 - 1;
      continue;
    }
    window_3x3(p, input, b, oy, ox, win);
    pixel_3x3(p, win, p->input.depth, output + offset4(&p->output, b, oy, ox, 0), q, clamp);
  }
}

/* The 3 x 3 path over every output pixel: a row's run of interior pixels reads the input in place, with pointers
 * stepped from pixel to pixel (its addresses computed once a row: about 30 instructions a pixel less), its border
 * pixels a copy of their window (border_3x3). */
BISUP_KERNEL_SPECIALISED void depthwise_3x3(const bisup_kernel_depthwise_params *p, const int8_t *input,
                                            int8_t *output, int clamp) {
  const bisup_kernel_shape *in = &p->input, *out = &p->output;
  const int32_t row = p->dilation_height * in->width * in->depth, col = p->dilation_width * in->depth;
  const int32_t step = p->stride_width * in->depth, depth = out->depth;
  const uint32_t bytes = 0x01010101u;
  pass_3x3 q = {row, 2 * p->output_offset + 1, (int32_t)((uint32_t)(uint8_t)p->activation_min * bytes),
                (int32_t)((uint32_t)(uint8_t)p->activation_max * bytes), NULL};
  int32_t y_lo, y_hi, x_lo, x_hi;
  bisup_kernel_interior_range(out->height, p->stride_height, p->pad_height, p->dilation_height, 3, in->height,
                              &y_lo, &y_hi);
  bisup_kernel_interior_range(out->width, p->stride_width, p->pad_width, p->dilation_width, 3, in->width, &x_lo,
                              &x_hi);
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t oy = 0; oy < out->height; ++oy) {
      const int interior = oy >= y_lo && oy < y_hi && x_lo < x_hi;
      if (interior) {
        const int8_t *x = input + offset4(in, b, oy * p->stride_height - p->pad_height,
                                          x_lo * p->stride_width - p->pad_width, 0);
        int8_t *o = output + offset4(out, b, oy, x_lo, 0), *o_end = o + (x_hi - x_lo) * depth;
        q.row = row;
        for (; o != o_end; x += step, o += depth) pixel_3x3(p, x, col, o, &q, clamp);
      }
      border_3x3(p, input, output, b, oy, interior ? x_lo : 0, interior ? x_hi : 0, &q, clamp);
    }
  }
}

/* The first tap index at or after which y0 + t * d >= 0, and the end of those with y0 + t * d < n. */
static void valid_taps(int32_t y0, int32_t d, int32_t f, int32_t n, int32_t *t0, int32_t *t1) {
  int32_t a = 0, z = f;
  while (a < f && y0 + a * d < 0) ++a;
  while (z > a && y0 + (z - 1) * d >= n) --z;
  *t0 = a;
  *t1 = z;
}

int bisup_kernel_depthwise_conv2d_dsp(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output) {
  const bisup_kernel_shape *in = &p->input, *out = &p->output;
  const int32_t taps = p->filter_height * p->filter_width, zp = -p->input_offset;
  if (p->depth_multiplier != 1 || in->depth < 4 || zp < -128 || zp > 127) return 0;
  /* |x + offset| <= 255, |w| <= 128: the accumulators' bound, shifted left by the largest left shift. */
  int32_t bias_max = 0, left = 0, all_right = 1;
  for (int32_t c = 0; c < out->depth; ++c) {
    const int32_t b = bias_of(p, c);
    const int32_t mag = b == INT32_MIN ? INT32_MAX : (b < 0 ? -b : b);
    bias_max = mag > bias_max ? mag : bias_max;
    left = p->shift[c] > left ? p->shift[c] : left;
    all_right &= p->shift[c] < 0 && p->shift[c] >= -31 && p->multiplier[c] != INT32_MIN;
  }
  const int64_t bound = ((int64_t)bias_max + (int64_t)255 * 128 * taps) << (left < 31 ? left : 31);
  const int small = bound < ((int64_t)1 << 30);
  if (small && all_right && p->filter_height == 3 && p->filter_width == 3 && p->filter_pairs && p->interior_bias &&
      in->depth <= BISUP_DW_DSP_WINDOW_DEPTH) {
    if (p->activation_min == -128 && p->activation_max == 127) {
      depthwise_3x3(p, input, output, 0);
    } else {
      depthwise_3x3(p, input, output, 1);
    }
    return 1;
  }
  const requant r = {p->multiplier, p->shift, p->output_offset, p->activation_min, p->activation_max, small,
                     small && all_right};
  const int32_t off2 = (int32_t)(((uint32_t)p->input_offset & 0xffffu) | ((uint32_t)p->input_offset << 16));
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t oy = 0; oy < out->height; ++oy) {
      const int32_t y0 = oy * p->stride_height - p->pad_height;
      int32_t fy0, fy1;
      valid_taps(y0, p->dilation_height, p->filter_height, in->height, &fy0, &fy1);
      for (int32_t ox = 0; ox < out->width; ++ox) {
        const int32_t x0 = ox * p->stride_width - p->pad_width;
        int8_t *o = output + offset4(out, b, oy, ox, 0);
        int32_t fx0, fx1;
        valid_taps(x0, p->dilation_width, p->filter_width, in->width, &fx0, &fx1);
        if (fy0 >= fy1 || fx0 >= fx1) { /* no tap inside the input: the bias alone */
          for (int32_t c = 0; c < out->depth; ++c) o[c] = output_of(&r, bias_of(p, c), c);
          continue;
        }
        const int8_t *x = input + offset4(in, b, y0 + fy0 * p->dilation_height, x0 + fx0 * p->dilation_width, 0);
        pixel_taps(p, &r, off2, x, o, fy0, fy1, fx0, fx1, 0);
      }
    }
  }
  return 1;
}
#else
typedef int bisup_kernel_depthwise_dsp_unused; /* ISO C forbids an empty translation unit */
#endif
