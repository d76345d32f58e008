/* bisup int8 kernels: CONV_2D with the Cortex-M DSP extension (ARMv7E-M, ARMv8-M Mainline: M4, M7, M33).
 *
 * Paths, by the im2col column length k = filter_height x filter_width x input depth:
 * - k <= BISUP_KERNEL_CONV_DSP_COLUMN_MAX (768; two widened columns, interleaved: 3 KB of static RAM), any filter,
 *   stride, dilation, padding, batch: two output pixels at a time, each pixel's int8 values (the input
 *   pixel itself for a 1x1 filter without padding, else its im2col column from conv.c, where padding taps
 *   hold the input zero point) are widened once to int16, in pairs (x0, x2), (x1, x3) per group of four
 *   (SXTB16 of the word and of the word rotated by 8). The weights are split the same way, so each SMLAD
 *   adds two products: two weight loads, four SXTB16, four column loads and eight SMLAD for 16
 *   multiply-accumulates (two pixels x two output channels). Where every sum stays below 2^30 and every shift is a
 *   right shift (short_form), the requantization is fused into the product, three pixels at a time (wide_three);
 *   and where moreover the activation range is all of int8 and the column, rounded up to a multiple of 4, is at
 *   most BISUP_KERNEL_CONV_DSP_SIX_MAX values (six_form), six pixels at a time, one output channel (wide_six: the
 *   channel's weight word split once for six pixels, 21 instructions per 24 multiply-accumulates; the channel loop
 *   and a six-instruction requantization in one asm block), the rest of the pixels three at a time.
 * - else a 1x1 filter without padding, or k <= BISUP_KERNEL_CONV_COLUMN_MAX: the int8 x int8 product
 *   bisup_kernel_gemm_rows_dsp (SXTB16 on both operands, no scratch beyond the int8 im2col).
 * - else 0: the portable kernel runs it.
 * The accumulators start from folded_bias = bias + input_offset x sum(w), so each output is TFLM's
 * sum(w * (x + input_offset)) + bias as the same integer (SMLAD's sum wraps exactly as int32 addition),
 * then TFLM's requantization.
 *
 * bisup_kernel_gemm_rows_dsp is also FULLY_CONNECTED's: four int8 of a row and of a weight row are read with
 * one unaligned 32-bit load each (memcpy: LDR on these cores); SXTB16 splits each word into its even bytes
 * (0, 2) and, rotated by 8, its odd bytes (1, 3) as two int16 pairs, and SMLAD adds both products of a pair
 * to an accumulator; a k not a multiple of 4 finishes value by value.
 */
#include "bisup_kernel_internal.h"

#if BISUP_KERNEL_DSP
#include <arm_acle.h>
#include <string.h>

static inline uint32_t load4(const int8_t *p) {
  uint32_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* The odd bytes: SXTB16 with its own rotation (GCC 12 does not fold __sxtb16(rotate) into one instruction). */
static inline int32_t odd_bytes(uint32_t v) {
  int32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
  return r;
}

#define EVEN(v) __sxtb16(v)
#define ODD(v) odd_bytes(v)

static void gemm_block(const bisup_kernel_gemm *gemm, const int8_t *row0, const int8_t *row1, int32_t c0, int32_t c1,
                       int32_t *acc0, int32_t *acc1) {
  const bisup_kernel_gemm local = *gemm, *g = &local; /* a local copy: the sums' stores cannot alias it */
  const int32_t k = g->k, k4 = k & ~3;
  int32_t c = c0;
  for (; c + 2 <= c1; c += 2) {
    const int8_t *w0 = g->weights + (size_t)c * k, *w1 = w0 + k;
    int32_t a00 = g->bias[c], a01 = g->bias[c + 1], a10 = a00, a11 = a01, i = 0; /* a<row><channel> */
    if (row1) {
      const int8_t *p0 = row0, *p1 = row1, *q0 = w0, *q1 = w1;
      for (int32_t n = k4 >> 2; n > 0; --n, p0 += 4, p1 += 4, q0 += 4, q1 += 4) {
        const uint32_t v0 = load4(q0), v1 = load4(q1), x0 = load4(p0), x1 = load4(p1);
        const int32_t v0e = EVEN(v0), v0o = ODD(v0), v1e = EVEN(v1), v1o = ODD(v1);
        const int32_t x0e = EVEN(x0), x0o = ODD(x0), x1e = EVEN(x1), x1o = ODD(x1);
        a00 = __smlad(x0e, v0e, a00);
        a00 = __smlad(x0o, v0o, a00);
        a01 = __smlad(x0e, v1e, a01);
        a01 = __smlad(x0o, v1o, a01);
        a10 = __smlad(x1e, v0e, a10);
        a10 = __smlad(x1o, v0o, a10);
        a11 = __smlad(x1e, v1e, a11);
        a11 = __smlad(x1o, v1o, a11);
      }
      i = k4;
      for (; i < k; ++i) {
        a00 += row0[i] * w0[i];
        a01 += row0[i] * w1[i];
        a10 += row1[i] * w0[i];
        a11 += row1[i] * w1[i];
      }
      acc1[c - c0] = a10;
      acc1[c - c0 + 1] = a11;
    } else {
      for (; i < k4; i += 4) {
        const uint32_t v0 = load4(w0 + i), v1 = load4(w1 + i), x0 = load4(row0 + i);
        const int32_t x0e = EVEN(x0), x0o = ODD(x0);
        a00 = __smlad(x0e, EVEN(v0), a00);
        a00 = __smlad(x0o, ODD(v0), a00);
        a01 = __smlad(x0e, EVEN(v1), a01);
        a01 = __smlad(x0o, ODD(v1), a01);
      }
      for (; i < k; ++i) {
        a00 += row0[i] * w0[i];
        a01 += row0[i] * w1[i];
      }
    }
    acc0[c - c0] = a00;
    acc0[c - c0 + 1] = a01;
  }
  if (c < c1) {
    const int8_t *w0 = g->weights + (size_t)c * k;
    int32_t a00 = g->bias[c], a10 = a00, i = 0;
    for (; i < k4; i += 4) {
      const uint32_t v0 = load4(w0 + i), x0 = load4(row0 + i);
      const int32_t v0e = EVEN(v0), v0o = ODD(v0);
      a00 = __smlad(EVEN(x0), v0e, a00);
      a00 = __smlad(ODD(x0), v0o, a00);
      if (row1) {
        const uint32_t x1 = load4(row1 + i);
        a10 = __smlad(EVEN(x1), v0e, a10);
        a10 = __smlad(ODD(x1), v0o, a10);
      }
    }
    for (; i < k; ++i) {
      a00 += row0[i] * w0[i];
      if (row1) a10 += row1[i] * w0[i];
    }
    acc0[c - c0] = a00;
    if (row1) acc1[c - c0] = a10;
  }
}

void bisup_kernel_gemm_rows_dsp(const bisup_kernel_gemm *g, const int8_t *row0, const int8_t *row1, int8_t *out0,
                                int8_t *out1) {
  int32_t acc0[BISUP_KERNEL_GEMM_BLOCK], acc1[BISUP_KERNEL_GEMM_BLOCK];
  for (int32_t c0 = 0; c0 < g->channels; c0 += BISUP_KERNEL_GEMM_BLOCK) {
    const int32_t c1 = g->channels - c0 < BISUP_KERNEL_GEMM_BLOCK ? g->channels : c0 + BISUP_KERNEL_GEMM_BLOCK;
    gemm_block(g, row0, row1, c0, c1, acc0, acc1);
    bisup_kernel_gemm_requantize(g, acc0, c0, c1, out0);
    if (row1) bisup_kernel_gemm_requantize(g, acc1, c0, c1, out1);
  }
}

#ifndef BISUP_KERNEL_CONV_DSP_COLUMN_MAX
#define BISUP_KERNEL_CONV_DSP_COLUMN_MAX 768 /* two columns of int16: 3 KB */
#endif

/* Two output pixels' widened columns, interleaved: for each group of four values, pixel 0's pairs
 * (x0, x2), (x1, x3), then pixel 1's, so that one pointer and two LDRD read both; the k % 4 last values of
 * each pixel apart. */
#ifndef BISUP_KERNEL_CONV_DSP_THREE_MAX
#define BISUP_KERNEL_CONV_DSP_THREE_MAX 576 /* three columns of int16: 3.4 KB (the 3x3 convolutions on 64 channels) */
#endif
#ifndef BISUP_KERNEL_CONV_DSP_SIX_MAX
#define BISUP_KERNEL_CONV_DSP_SIX_MAX 288 /* six columns of int16 in the same scratch (3.4 KB) */
#endif
#define WIDE_TWO (2 * (BISUP_KERNEL_CONV_DSP_COLUMN_MAX / 2))
#define WIDE_THREE (3 * (BISUP_KERNEL_CONV_DSP_THREE_MAX / 2))
#define WIDE_SIX (3 * ((BISUP_KERNEL_CONV_DSP_SIX_MAX + 3) & ~3))
#define WIDE_MAX(a, b) ((a) > (b) ? (a) : (b))
static int32_t wide[WIDE_MAX(WIDE_MAX(WIDE_TWO, WIDE_THREE), WIDE_SIX)];
static int32_t wide_tail[3][3];

/* k int8 values into the pairs of one pixel (every fourth word pair from dst), the k % 4 last into tail. */
static void widen(const int8_t *x, int32_t k, int32_t *dst, int32_t *tail, int32_t stride) {
  int32_t i = 0;
  for (; i + 4 <= k; i += 4, dst += stride) {
    const uint32_t v = load4(x + i);
    dst[0] = EVEN(v);
    dst[1] = ODD(v);
  }
  for (int32_t j = 0; i < k; ++i, ++j) tail[j] = x[i];
}

/* The im2col column of a window wholly inside the input, dilation_width 1: its rows of row_bytes values, row_step
 * apart, word by word then byte by byte (newlib's memcpy call costs more than these few bytes: a third of the first
 * layer of VWW). */
static void gather_rows(const int8_t *x, int32_t row_step, int32_t rows, int32_t row_bytes, int8_t *col) {
  for (; rows > 0; --rows, x += row_step, col += row_bytes) {
    int32_t i = 0;
    for (; i + 4 <= row_bytes; i += 4) memcpy(col + i, x + i, 4);
    for (; i < row_bytes; ++i) col[i] = x[i];
  }
}

/* The column of three rows of 9 values (a 3 x 3 filter on 3 channels: the first layer of RGB models), row_step apart,
 * wholly inside the input, widened as 28 values (the last one zero) without the int8 im2col: its seven words put
 * together from word loads (gather_rows, the rounding and widen took about 200 instructions a pixel; this 35). Every
 * load stays inside the input: the bytes past a row's ninth that w4 reads are the next row's. */
static void widen_rows_of_9(const int8_t *r0, int32_t row_step, int32_t *dst, int32_t stride) {
  const int8_t *r1 = r0 + row_step, *r2 = r1 + row_step;
  const uint32_t words[7] = {load4(r0), load4(r0 + 4), (uint8_t)r0[8] | load4(r1) << 8, load4(r1 + 3),
                             (load4(r1 + 7) & 0xffffu) | load4(r2) << 16, load4(r2 + 2), load4(r2 + 5) >> 8};
#pragma GCC unroll 7
  for (int32_t i = 0; i < 7; ++i, dst += stride) {
    dst[0] = EVEN(words[i]);
    dst[1] = ODD(words[i]);
  }
}

/* Words a and b at dst, dst + 1 (word-aligned): one STRD, which GCC does not make of two int32_t stores here. */
static inline void store_pair(int32_t *dst, int32_t a, int32_t b) {
  const uint64_t v = (uint32_t)a | (uint64_t)(uint32_t)b << 32;
  memcpy(dst, &v, sizeof v);
}

/* widen_rows_of_9 for six windows pixel_step bytes apart (six pixels of one output row, every window inside the
 * input) into wide's six-pixel layout, with no call, check or address computation per pixel. */
static void widen_six_rows_of_9(const int8_t *r0, int32_t row_step, int32_t pixel_step) {
  int32_t *dst = wide;
  for (int32_t j = 0; j < 6; ++j, r0 += pixel_step, dst += 2) {
    const int8_t *r1 = r0 + row_step, *r2 = r1 + row_step;
    const uint32_t words[7] = {load4(r0), load4(r0 + 4), (uint8_t)r0[8] | load4(r1) << 8, load4(r1 + 3),
                               (load4(r1 + 7) & 0xffffu) | load4(r2) << 16, load4(r2 + 2), load4(r2 + 5) >> 8};
#pragma GCC unroll 7
    for (int32_t i = 0; i < 7; ++i) store_pair(dst + 12 * i, EVEN(words[i]), ODD(words[i]));
  }
}

/* Six consecutive pixels of k values (k % 4 == 0), from x, into wide's six-pixel layout (conv2d_dsp); doubled
 * (a constant at each call): each value times 2 (SADD16 of a pair with itself: |2 x| <= 256 fits 16 bits), so that
 * the sums come out doubled, as the requantization's SMMULR wants them (wide_six). */
BISUP_KERNEL_SPECIALISED void widen_six(const int8_t *x, int32_t k, int doubled) {
  int32_t *dst = wide;
  for (const int8_t *end = x + k; x != end; x += 4, dst += 12) {
#pragma GCC unroll 6
    for (int32_t j = 0; j < 6; ++j) {
      const uint32_t v = load4(x + j * k);
      const int32_t even = EVEN(v), odd = ODD(v);
      dst[2 * j] = doubled ? (int32_t)__sadd16(even, even) : even;
      dst[2 * j + 1] = doubled ? (int32_t)__sadd16(odd, odd) : odd;
    }
  }
}

/* Output pixel (b, oy, ox)'s widened im2col column, straight from the input where every segment (a filter
 * row inside the input, or a tap) is a multiple of 4 values, so that the groups of four never straddle two
 * segments; through the int8 im2col (conv.c) otherwise. Padding taps widen the input zero point. round: a column
 * of k % 4 != 0 values is widened as k rounded up to a multiple of 4, its last ones zero (they add nothing, whatever
 * weight meets them), and no tail. */
static void widen_window(const bisup_kernel_conv_params *p, const int8_t *input, int32_t b, int32_t oy, int32_t ox,
                         int32_t *dst, int32_t *tail, int32_t stride, int round) {
  const bisup_kernel_shape *in = &p->input;
  const int32_t depth = in->depth, row_bytes = p->filter_width * depth;
  const int32_t y0 = oy * p->stride_height - p->pad_height, x0 = ox * p->stride_width - p->pad_width;
  const int inside_x = x0 >= 0 && x0 + (p->filter_width - 1) * p->dilation_width < in->width;
  const int rows_whole = p->dilation_width == 1 && inside_x && (row_bytes & 3) == 0;
  if (!rows_whole && (depth & 3) != 0) {
    int8_t *col = bisup_kernel_conv_columns[0];
    int32_t k = p->filter_height * row_bytes;
    const int inside_y = y0 >= 0 && y0 + (p->filter_height - 1) * p->dilation_height < in->height;
    const int32_t row_step = p->dilation_height * in->width * depth;
    if (round && p->dilation_width == 1 && inside_x && inside_y && p->filter_height == 3 && row_bytes == 9) {
      widen_rows_of_9(input + offset4(in, b, y0, x0, 0), row_step, dst, stride);
      return;
    }
    if (p->dilation_width == 1 && inside_x && inside_y) {
      gather_rows(input + offset4(in, b, y0, x0, 0), row_step, p->filter_height, row_bytes, col);
    } else {
      bisup_kernel_conv_im2col(p, input, b, oy, ox, col);
    }
    for (; round && (k & 3) != 0; ++k) col[k] = 0; /* BISUP_KERNEL_CONV_COLUMN_MAX is a multiple of 4 */
    widen(col, k, dst, tail, stride);
    return;
  }
  const int32_t zero_points = EVEN((uint32_t)(uint8_t)(-p->input_offset) * 0x01010101u);
  for (int32_t fy = 0; fy < p->filter_height; ++fy) {
    const int32_t y = y0 + fy * p->dilation_height;
    if (y < 0 || y >= in->height) {
      for (int32_t n = row_bytes >> 2; n > 0; --n, dst += stride) dst[0] = dst[1] = zero_points;
    } else if (rows_whole) {
      widen(input + offset4(in, b, y, x0, 0), row_bytes, dst, tail, stride);
      dst += (row_bytes >> 2) * stride;
    } else {
      for (int32_t fx = 0; fx < p->filter_width; ++fx) {
        const int32_t x = x0 + fx * p->dilation_width;
        if (x < 0 || x >= in->width) {
          for (int32_t n = depth >> 2; n > 0; --n, dst += stride) dst[0] = dst[1] = zero_points;
        } else {
          widen(input + offset4(in, b, y, x, 0), depth, dst, tail, stride);
          dst += (depth >> 2) * stride;
        }
      }
    }
  }
}

/* wide's first column (and, when two, its second) times every output channel's weights, requantized. */
/* The 2 x 2 inner loop (GCC lays its C out with a spilled register: 23 instructions; this is 19): for each
 * group of four values, channel c's and c + 1's weight words (w, w + k), split by SXTB16 into even and odd
 * pairs, times both pixels' widened pairs (x[0], x[1] and x[2], x[3]), eight SMLAD. Twelve registers; x and
 * the widened columns are word-aligned (LDRD), the weights need not be (LDR). Runs at least one group;
 * returns w past the groups. */
static inline const int8_t *product_2x2(const int8_t *w, int32_t k, const int32_t *x, const int32_t *end,
                                        int32_t *a00, int32_t *a01, int32_t *a10, int32_t *a11) {
  int32_t s00 = *a00, s01 = *a01, s10 = *a10, s11 = *a11, e, o, xe, xo;
  __asm__("1:\n\t"
          "ldr    %[e], [%[w], %[k]]\n\t"
          "sxtb16 %[o], %[e], ror #8\n\t"
          "sxtb16 %[e], %[e]\n\t"
          "ldrd   %[xe], %[xo], [%[x], #8]\n\t"
          "smlad  %[s11], %[xe], %[e], %[s11]\n\t"
          "smlad  %[s11], %[xo], %[o], %[s11]\n\t"
          "ldrd   %[xe], %[xo], [%[x]], #16\n\t"
          "smlad  %[s01], %[xe], %[e], %[s01]\n\t"
          "smlad  %[s01], %[xo], %[o], %[s01]\n\t"
          "ldr    %[e], [%[w]], #4\n\t"
          "sxtb16 %[o], %[e], ror #8\n\t"
          "sxtb16 %[e], %[e]\n\t"
          "smlad  %[s00], %[xe], %[e], %[s00]\n\t"
          "smlad  %[s00], %[xo], %[o], %[s00]\n\t"
          "ldrd   %[xe], %[xo], [%[x], #-8]\n\t"
          "smlad  %[s10], %[xe], %[e], %[s10]\n\t"
          "smlad  %[s10], %[xo], %[o], %[s10]\n\t"
          "cmp    %[x], %[end]\n\t"
          "bne    1b"
          : [s00] "+r"(s00), [s01] "+r"(s01), [s10] "+r"(s10), [s11] "+r"(s11), [w] "+r"(w), [x] "+r"(x),
            [e] "=&r"(e), [o] "=&r"(o), [xe] "=&r"(xe), [xo] "=&r"(xo)
          : [k] "r"(k), [end] "r"(end)
          : "cc", "memory");
  *a00 = s00;
  *a01 = s01;
  *a10 = s10;
  *a11 = s11;
  return w;
}

/* Channels c and c + 1 of the widened column(s): s[row][channel] from the bias, rows 0 and (with two) 1. */
BISUP_KERNEL_SPECIALISED void pair_sums(const bisup_kernel_gemm *g, int two, int32_t c, int32_t s[2][2]) {
  const int32_t k = g->k, groups = k >> 2, rest = k & 3;
  const int32_t *tail0 = wide_tail[0], *tail1 = wide_tail[1], *end = wide + 4 * groups;
  const int8_t *w = g->weights + (size_t)c * k;
  const int32_t *x = wide;
  int32_t a00 = g->bias[c], a01 = g->bias[c + 1], a10 = a00, a11 = a01; /* a<row><channel> */
  if (two) {
    if (groups > 0) w = product_2x2(w, k, x, end, &a00, &a01, &a10, &a11);
    for (int32_t j = 0; j < rest; ++j) {
      a00 += w[j] * tail0[j];
      a01 += w[k + j] * tail0[j];
      a10 += w[j] * tail1[j];
      a11 += w[k + j] * tail1[j];
    }
  } else {
    for (; x != end; w += 4, x += 4) {
      const uint32_t v0 = load4(w), v1 = load4(w + k);
      a00 = __smlad(x[0], EVEN(v0), a00);
      a00 = __smlad(x[1], ODD(v0), a00);
      a01 = __smlad(x[0], EVEN(v1), a01);
      a01 = __smlad(x[1], ODD(v1), a01);
    }
    for (int32_t j = 0; j < rest; ++j) {
      a00 += w[j] * tail0[j];
      a01 += w[k + j] * tail0[j];
    }
  }
  s[0][0] = a00;
  s[0][1] = a01;
  s[1][0] = a10;
  s[1][1] = a11;
}

/* The layer's last channel c when the channel count is odd: s[row] for rows 0 and (with two) 1. */
BISUP_KERNEL_SPECIALISED void last_sums(const bisup_kernel_gemm *g, int two, int32_t c, int32_t s[2]) {
  const int32_t k = g->k, groups = k >> 2, rest = k & 3;
  const int32_t *tail0 = wide_tail[0], *tail1 = wide_tail[1];
  const int8_t *w = g->weights + (size_t)c * k;
  int32_t a00 = g->bias[c], a10 = a00;
  for (int32_t n = 0; n < groups; ++n) {
    const uint32_t v0 = load4(w + 4 * n);
    const int32_t v0e = EVEN(v0), v0o = ODD(v0);
    a00 = __smlad(wide[4 * n], v0e, a00);
    a00 = __smlad(wide[4 * n + 1], v0o, a00);
    if (two) {
      a10 = __smlad(wide[4 * n + 2], v0e, a10);
      a10 = __smlad(wide[4 * n + 3], v0o, a10);
    }
  }
  for (int32_t j = 0; j < rest; ++j) {
    a00 += w[4 * groups + j] * tail0[j];
    if (two) a10 += w[4 * groups + j] * tail1[j];
  }
  s[0] = a00;
  s[1] = a10;
}

static void gemm_wide_block(const bisup_kernel_gemm *gemm, int two, int32_t c0, int32_t c1, int32_t *acc0,
                            int32_t *acc1) {
  const bisup_kernel_gemm local = *gemm, *g = &local; /* a local copy: the sums' stores cannot alias it */
  int32_t c = c0;
  for (; c + 2 <= c1; c += 2) {
    int32_t s[2][2];
    pair_sums(g, two, c, s);
    acc0[c - c0] = s[0][0];
    acc0[c - c0 + 1] = s[0][1];
    if (two) {
      acc1[c - c0] = s[1][0];
      acc1[c - c0 + 1] = s[1][1];
    }
  }
  if (c < c1) {
    int32_t s[2];
    last_sums(g, two, c, s);
    acc0[c - c0] = s[0];
    if (two) acc1[c - c0] = s[1];
  }
}

/* 1 when bisup_kernel_requantize_short is exact for every channel of the layer: its sums are below 2^30 in
 * magnitude (|folded_bias| + k x 128 x 128 < 2^30), its shifts right shifts. */
static int short_form(const bisup_kernel_gemm *g) {
  const int64_t products = (int64_t)g->k * 128 * 128;
  for (int32_t c = 0; c < g->channels; ++c) {
    const int32_t m = g->multiplier[c * g->per_channel], shift = g->shift[c * g->per_channel];
    const int64_t bias = g->bias[c];
    if (m == INT32_MIN || shift > -1 || shift < -31) return 0;
    if ((bias < 0 ? -bias : bias) + products >= ((int64_t)1 << 30)) return 0;
  }
  return 1;
}

/* The requantization fused into the product, for a layer whose every channel passes short_form(): no sums
 * stored, each channel's multiplier and shift loaded once for both pixels (bisup_kernel_requantize_short). */
BISUP_KERNEL_SPECIALISED void wide_short(const bisup_kernel_gemm *gemm, int two, int8_t *out0, int8_t *out1,
                                         int full) {
  const bisup_kernel_gemm local = *gemm, *g = &local; /* a local copy: the output stores cannot alias it */
  const int32_t step = g->per_channel, c1 = g->channels;
  const int32_t offset21 = 2 * g->output_offset + 1, lo = g->activation_min, hi = g->activation_max;
  const int32_t *multiplier = g->multiplier, *shift = g->shift;
  int32_t c = 0;
  for (; c + 2 <= c1; c += 2) {
    int32_t s[2][2];
    pair_sums(g, two, c, s);
    const int32_t m0 = multiplier[c * step], m1 = multiplier[(c + 1) * step];
    const int32_t e0 = -shift[c * step] - 1, e1 = -shift[(c + 1) * step] - 1;
    out0[c] = bisup_kernel_requantize_short(s[0][0], m0, e0, offset21, lo, hi, full);
    out0[c + 1] = bisup_kernel_requantize_short(s[0][1], m1, e1, offset21, lo, hi, full);
    if (two) {
      out1[c] = bisup_kernel_requantize_short(s[1][0], m0, e0, offset21, lo, hi, full);
      out1[c + 1] = bisup_kernel_requantize_short(s[1][1], m1, e1, offset21, lo, hi, full);
    }
  }
  if (c < c1) {
    int32_t s[2];
    last_sums(g, two, c, s);
    const int32_t m0 = multiplier[c * step], e0 = -shift[c * step] - 1;
    out0[c] = bisup_kernel_requantize_short(s[0], m0, e0, offset21, lo, hi, full);
    if (two) out1[c] = bisup_kernel_requantize_short(s[1], m0, e0, offset21, lo, hi, full);
  }
}

/* Three output pixels at a time (a layer passing short_form(), k <= BISUP_KERNEL_CONV_DSP_THREE_MAX): wide holds
 * per group of four values pixel 0's pairs, pixel 1's, pixel 2's (six words). The 3 x 2 inner loop: channel
 * c + 1's weight word split by SXTB16 times the three pixels' pairs, then channel c's in the other order (pixel
 * 2's pairs still loaded): two LDR, four SXTB16, five LDRD, twelve SMLAD and the loop's two, 25 instructions
 * for 24 multiply-accumulates (the 2 x 2 loop's 19 for 16). Fourteen registers. Runs at least one group;
 * returns w past the groups. */
#define PRODUCT_3X2_LOOP                                                                                               \
  "1:\n\t"                                                                                                             \
  "ldr    %[e], [%[w], %[k]]\n\t"                                                                                      \
  "sxtb16 %[o], %[e], ror #8\n\t"                                                                                      \
  "sxtb16 %[e], %[e]\n\t"                                                                                              \
  "ldrd   %[xe], %[xo], [%[x]]\n\t"                                                                                    \
  "smlad  %[s01], %[xe], %[e], %[s01]\n\t"                                                                             \
  "smlad  %[s01], %[xo], %[o], %[s01]\n\t"                                                                             \
  "ldrd   %[xe], %[xo], [%[x], #8]\n\t"                                                                                \
  "smlad  %[s11], %[xe], %[e], %[s11]\n\t"                                                                             \
  "smlad  %[s11], %[xo], %[o], %[s11]\n\t"                                                                             \
  "ldrd   %[xe], %[xo], [%[x], #16]\n\t"                                                                               \
  "smlad  %[s21], %[xe], %[e], %[s21]\n\t"                                                                             \
  "smlad  %[s21], %[xo], %[o], %[s21]\n\t"                                                                             \
  "ldr    %[e], [%[w]], #4\n\t"                                                                                        \
  "sxtb16 %[o], %[e], ror #8\n\t"                                                                                      \
  "sxtb16 %[e], %[e]\n\t"                                                                                              \
  "smlad  %[s20], %[xe], %[e], %[s20]\n\t"                                                                             \
  "smlad  %[s20], %[xo], %[o], %[s20]\n\t"                                                                             \
  "ldrd   %[xe], %[xo], [%[x], #8]\n\t"                                                                                \
  "smlad  %[s10], %[xe], %[e], %[s10]\n\t"                                                                             \
  "smlad  %[s10], %[xo], %[o], %[s10]\n\t"                                                                             \
  "ldrd   %[xe], %[xo], [%[x]], #24\n\t"                                                                               \
  "smlad  %[s00], %[xe], %[e], %[s00]\n\t"                                                                             \
  "smlad  %[s00], %[xo], %[o], %[s00]\n\t"                                                                             \
  "cmp    %[x], %[end]\n\t"                                                                                            \
  "bne    1b\n\t"

BISUP_KERNEL_SPECIALISED const int8_t *product_3x2(const int8_t *w, int32_t k, const int32_t *x, const int32_t *end,
                                                 int32_t *acc) {
  int32_t s00 = acc[0], s01 = acc[1], s10 = acc[2], s11 = acc[3], s20 = acc[4], s21 = acc[5], e, o, xe, xo;
  __asm__(PRODUCT_3X2_LOOP
          : [s00] "+r"(s00), [s01] "+r"(s01), [s10] "+r"(s10), [s11] "+r"(s11), [s20] "+r"(s20), [s21] "+r"(s21),
            [w] "+r"(w), [x] "+r"(x), [e] "=&r"(e), [o] "=&r"(o), [xe] "=&r"(xe), [xo] "=&r"(xo)
          : [k] "r"(k), [end] "r"(end)
          : "cc", "memory");
  acc[0] = s00;
  acc[1] = s01;
  acc[2] = s10;
  acc[3] = s11;
  acc[4] = s20;
  acc[5] = s21;
  return w;
}

/* product_3x2_full's cursor over the channel pairs, in memory: the loop's fourteen registers leave none for it.
 * bias, multiplier, shift: channel c's; out: pixel 0's channel c; each advanced by a pair. */
typedef struct {
  const int32_t *bias, *multiplier, *shift;
  int8_t *out;
  int32_t offset21, channels;
} pair_cursor;

/* Sum s requantized with multiplier m, e = -shift - 1 and offset21 in register xe (bisup_kernel_requantize_short,
 * full range), stored at xo + at. */
#define REQUANTIZE_FULL(s, m, e, at)                                                                                   \
  "lsl    %[" #s "], %[" #s "], #1\n\t"                                                                                \
  "smmulr %[" #s "], %[" #s "], %[" #m "]\n\t"                                                                         \
  "add    %[" #s "], %[" #s "], %[" #s "], asr #31\n\t"                                                                \
  "asr    %[" #s "], %[" #s "], %[" #e "]\n\t"                                                                         \
  "add    %[" #s "], %[" #s "], %[xe]\n\t"                                                                             \
  "ssat   %[" #s "], #8, %[" #s "], asr #1\n\t"                                                                        \
  "strb   %[" #s "], [%[xo], #" #at "]\n\t"

/* The next channel pair of q (the activation range all of int8): its sums from the biases, product_3x2's loop and
 * the six outputs' requantization in one asm block. In C around the loop, the sums and the pair's parameters were
 * spilled and reloaded: about 100 instructions a channel pair besides the loop; here 78, 65 of them in the asm. */
BISUP_KERNEL_SPECIALISED void product_3x2_full(const int8_t *w, int32_t k, const int32_t *x, const int32_t *end,
                                               pair_cursor *q) {
  int32_t s00, s01, s10, s11, s20, s21, e, o, xe, xo;
  __asm__ volatile( /* volatile: its stores are its only effect */
          "ldr    %[e], %[bias]\n\t"
          "ldrd   %[s00], %[s01], [%[e]], #8\n\t"
          "str    %[e], %[bias]\n\t"
          "mov    %[s10], %[s00]\n\t"
          "mov    %[s20], %[s00]\n\t"
          "mov    %[s11], %[s01]\n\t"
          "mov    %[s21], %[s01]\n\t"
          PRODUCT_3X2_LOOP
          "ldr    %[k], %[multiplier]\n\t"
          "ldrd   %[w], %[x], [%[k]], #8\n\t"
          "str    %[k], %[multiplier]\n\t"
          "ldr    %[k], %[shift]\n\t"
          "ldrd   %[e], %[o], [%[k]], #8\n\t"
          "str    %[k], %[shift]\n\t"
          "mvn    %[e], %[e]\n\t"
          "mvn    %[o], %[o]\n\t"
          "ldr    %[xe], %[offset21]\n\t"
          "ldr    %[xo], %[out]\n\t"
          "add    %[k], %[xo], #2\n\t"
          "str    %[k], %[out]\n\t"
          "ldr    %[k], %[channels]\n\t"
          REQUANTIZE_FULL(s00, w, e, 0) REQUANTIZE_FULL(s01, x, o, 1)
          "add    %[xo], %[xo], %[k]\n\t"
          REQUANTIZE_FULL(s10, w, e, 0) REQUANTIZE_FULL(s11, x, o, 1)
          "add    %[xo], %[xo], %[k]\n\t"
          REQUANTIZE_FULL(s20, w, e, 0) REQUANTIZE_FULL(s21, x, o, 1)
          : [s00] "=&r"(s00), [s01] "=&r"(s01), [s10] "=&r"(s10), [s11] "=&r"(s11), [s20] "=&r"(s20),
            [s21] "=&r"(s21), [w] "+r"(w), [x] "+r"(x), [e] "=&r"(e), [o] "=&r"(o), [xe] "=&r"(xe), [xo] "=&r"(xo),
            [k] "+r"(k), [bias] "+m"(q->bias), [multiplier] "+m"(q->multiplier), [shift] "+m"(q->shift),
            [out] "+m"(q->out)
          : [end] "r"(end), [offset21] "m"(q->offset21), [channels] "m"(q->channels)
          : "cc", "memory");
}

/* pixels (1 to 3) output pixels from wide's three-pixel layout (columns of a multiple of 4 values, rounded up from
 * k: no tail), requantized by bisup_kernel_requantize_short (full: the activation range is all of int8). A rounded
 * up column's last weight word of a row runs into the next row, or past the last row into the filter's 3 spare
 * bytes: zeros of the column meet them. */
BISUP_KERNEL_SPECIALISED void wide_three(const bisup_kernel_gemm *gemm, int32_t pixels, int8_t *out, int full) {
  const bisup_kernel_gemm local = *gemm, *g = &local; /* a local copy: the output stores cannot alias it */
  const int32_t k = g->k, groups = (k + 3) >> 2, channels = g->channels; /* per channel: conv2d_dsp */
  const int32_t offset21 = 2 * g->output_offset + 1, lo = g->activation_min, hi = g->activation_max;
  const int32_t *end = wide + 6 * groups;
  int32_t c = 0;
  if (pixels == 3 && full) {
    pair_cursor q = {g->bias, g->multiplier, g->shift, out, offset21, channels};
    for (; c + 2 <= channels; c += 2) product_3x2_full(g->weights + (size_t)c * k, k, wide, end, &q);
  } else if (pixels == 3) {
    for (; c + 2 <= channels; c += 2) {
      int32_t acc[6]; /* acc[2 p + j]: pixel p, channel c + j; constant indices only, so kept in registers */
      acc[0] = acc[2] = acc[4] = g->bias[c];
      acc[1] = acc[3] = acc[5] = g->bias[c + 1];
      product_3x2(g->weights + (size_t)c * k, k, wide, end, acc);
      const int32_t m0 = g->multiplier[c], m1 = g->multiplier[c + 1];
      const int32_t e0 = ~g->shift[c], e1 = ~g->shift[c + 1]; /* -shift - 1 */
      int8_t *o = out + c;
      o[0] = bisup_kernel_requantize_short(acc[0], m0, e0, offset21, lo, hi, full);
      o[1] = bisup_kernel_requantize_short(acc[1], m1, e1, offset21, lo, hi, full);
      o[channels] = bisup_kernel_requantize_short(acc[2], m0, e0, offset21, lo, hi, full);
      o[channels + 1] = bisup_kernel_requantize_short(acc[3], m1, e1, offset21, lo, hi, full);
      o[2 * channels] = bisup_kernel_requantize_short(acc[4], m0, e0, offset21, lo, hi, full);
      o[2 * channels + 1] = bisup_kernel_requantize_short(acc[5], m1, e1, offset21, lo, hi, full);
    }
  }
  for (; c < channels; ++c) {
    const int8_t *w = g->weights + (size_t)c * k;
    const int32_t m0 = g->multiplier[c], e0 = ~g->shift[c];
    for (int32_t q = 0; q < pixels; ++q) {
      int32_t a = g->bias[c];
      for (int32_t n = 0; n < groups; ++n) {
        const uint32_t v = load4(w + 4 * n);
        a = __smlad(wide[6 * n + 2 * q], EVEN(v), a);
        a = __smlad(wide[6 * n + 2 * q + 1], ODD(v), a);
      }
      out[q * channels + c] = bisup_kernel_requantize_short(a, m0, e0, offset21, lo, hi, full);
    }
  }
}

/* Six output pixels at a time, one output channel (a layer passing short_form() whose activation range is all of
 * int8, rounded-up k <= BISUP_KERNEL_CONV_DSP_SIX_MAX): wide holds per group of four values the six pixels' pairs
 * (twelve words). The 6 x 1 inner loop: the channel's weight word split by SXTB16 once for six pixels, six LDRD,
 * twelve SMLAD: 21 instructions per 24 multiply-accumulates (product_3x2's 23 besides its loop), written twice so
 * that the loop's CMP and BNE come once per 48; an odd group count enters at the second copy. The channel's weights
 * are a pointer, its x the columns, so no k register: thirteen registers for the loop, one (t) for the cursor. */
#define PRODUCT_6X1_GROUP                                                                                              \
  "ldr    %[e], [%[w]], #4\n\t"                                                                                        \
  "sxtb16 %[o], %[e], ror #8\n\t"                                                                                      \
  "sxtb16 %[e], %[e]\n\t"                                                                                              \
  "ldrd   %[xe], %[xo], [%[x], #8]\n\t"                                                                                \
  "smlad  %[s1], %[xe], %[e], %[s1]\n\t"                                                                               \
  "smlad  %[s1], %[xo], %[o], %[s1]\n\t"                                                                               \
  "ldrd   %[xe], %[xo], [%[x], #16]\n\t"                                                                               \
  "smlad  %[s2], %[xe], %[e], %[s2]\n\t"                                                                               \
  "smlad  %[s2], %[xo], %[o], %[s2]\n\t"                                                                               \
  "ldrd   %[xe], %[xo], [%[x], #24]\n\t"                                                                               \
  "smlad  %[s3], %[xe], %[e], %[s3]\n\t"                                                                               \
  "smlad  %[s3], %[xo], %[o], %[s3]\n\t"                                                                               \
  "ldrd   %[xe], %[xo], [%[x], #32]\n\t"                                                                               \
  "smlad  %[s4], %[xe], %[e], %[s4]\n\t"                                                                               \
  "smlad  %[s4], %[xo], %[o], %[s4]\n\t"                                                                               \
  "ldrd   %[xe], %[xo], [%[x], #40]\n\t"                                                                               \
  "smlad  %[s5], %[xe], %[e], %[s5]\n\t"                                                                               \
  "smlad  %[s5], %[xo], %[o], %[s5]\n\t"                                                                               \
  "ldrd   %[xe], %[xo], [%[x]], #48\n\t"                                                                               \
  "smlad  %[s0], %[xe], %[e], %[s0]\n\t"                                                                               \
  "smlad  %[s0], %[xo], %[o], %[s0]\n\t"

/* PRODUCT_6X1_GROUP for the first group of a channel: every sum starts from s0 (the bias), so no copies of it. */
#define PRODUCT_6X1_FIRST                                                                                              \
  "ldr    %[e], [%[w]], #4\n\t"                                                                                        \
  "sxtb16 %[o], %[e], ror #8\n\t"                                                                                      \
  "sxtb16 %[e], %[e]\n\t"                                                                                              \
  "ldrd   %[xe], %[xo], [%[x], #8]\n\t"                                                                                \
  "smlad  %[s1], %[xe], %[e], %[s0]\n\t"                                                                               \
  "smlad  %[s1], %[xo], %[o], %[s1]\n\t"                                                                               \
  "ldrd   %[xe], %[xo], [%[x], #16]\n\t"                                                                               \
  "smlad  %[s2], %[xe], %[e], %[s0]\n\t"                                                                               \
  "smlad  %[s2], %[xo], %[o], %[s2]\n\t"                                                                               \
  "ldrd   %[xe], %[xo], [%[x], #24]\n\t"                                                                               \
  "smlad  %[s3], %[xe], %[e], %[s0]\n\t"                                                                               \
  "smlad  %[s3], %[xo], %[o], %[s3]\n\t"                                                                               \
  "ldrd   %[xe], %[xo], [%[x], #32]\n\t"                                                                               \
  "smlad  %[s4], %[xe], %[e], %[s0]\n\t"                                                                               \
  "smlad  %[s4], %[xo], %[o], %[s4]\n\t"                                                                               \
  "ldrd   %[xe], %[xo], [%[x], #40]\n\t"                                                                               \
  "smlad  %[s5], %[xe], %[e], %[s0]\n\t"                                                                               \
  "smlad  %[s5], %[xo], %[o], %[s5]\n\t"                                                                               \
  "ldrd   %[xe], %[xo], [%[x]], #48\n\t"                                                                               \
  "smlad  %[s0], %[xe], %[e], %[s0]\n\t"                                                                               \
  "smlad  %[s0], %[xo], %[o], %[s0]\n\t"

/* PRODUCT_6X1_ALL's layer parameters and cursors, in memory (the loop's registers leave one for them): bias is
 * channel c's, its multiplier and shift to_multiplier and to_shift bytes from it; out is pixel 0's channel c; start
 * is wide; back is the rounded-up k less k (each channel's weights start k after the last's); out_last is pixel
 * 5's last channel. */
typedef struct {
  const int32_t *bias;
  int32_t to_multiplier, to_shift;
  int8_t *out;
  int32_t offset21, channels;
  const int32_t *start;
  int32_t back;
  const int8_t *out_last;
} six_cursor;

/* Sum s (below 2^30 in magnitude) requantized and stored at xo, with multiplier m in e, e1 = -shift - 1 in x and
 * offset21 << e1 in xe (o a scratch register): SMMLAR adds xe - [s < 0] to SMMULR's high word h of 2 s x m, so the
 * ASR by e1 gives ((h - [s < 0]) >> e1) + offset21 exactly (offset21 << e1 is a multiple of 2^e1; six_form bounds
 * |h| + |offset21 << e1| below 2^31), and SSAT halves and clamps it. That is bisup_kernel_requantize_short's value:
 * it subtracts [h < 0], and with m >= 0, h < 0 only when s < 0, and s < 0 with h = 0 gives (-1 >> e1) + offset21 =
 * offset21 - 1, which halves (offset21 is odd) to what offset21 does. Six instructions, not seven. */
#define REQUANTIZE_SIX(s) "lsl    %[" #s "], %[" #s "], #1\n\t" REQUANTIZE_SIX_DOUBLED(s)
/* REQUANTIZE_SIX of a sum already doubled (wide_six's doubled: 2 s, below 2^31 in magnitude). */
#define REQUANTIZE_SIX_DOUBLED(s)                                                                                      \
  "add    %[o], %[xe], %[" #s "], asr #31\n\t"                                                                         \
  "smmlar %[" #s "], %[" #s "], %[e], %[o]\n\t"                                                                        \
  "asr    %[" #s "], %[" #s "], %[x]\n\t"                                                                              \
  "ssat   %[" #s "], #8, %[" #s "], asr #1\n\t"                                                                        \
  "strb   %[" #s "], [%[xo]]\n\t"

/* Every channel's six outputs (weights from w): the sums from the bias, the 6 x 1 loop, the requantization and the
 * stores, the channel loop included, in one asm block: about 60 instructions a channel besides the product (80 in C
 * around an asm block per channel). doubling: the bias's LSL when wide is doubled; enter: the branch into the loop
 * after the first group; requantize: REQUANTIZE_SIX or, wide doubled, REQUANTIZE_SIX_DOUBLED; rewind: REWIND when
 * k % 4 != 0. */
#define PRODUCT_6X1_ALL(doubling, enter, requantize, rewind)                                                           \
  __asm__ volatile(/* volatile: its stores are its only effect */                                                      \
                   "3:\n\t"                                                                                            \
                   "ldr    %[t], %[bias]\n\t"                                                                          \
                   "ldr    %[s0], [%[t]]\n\t" doubling                                                                 \
                   "ldr    %[x], %[start]\n\t" PRODUCT_6X1_FIRST enter                                                 \
                   "1:\n\t" PRODUCT_6X1_GROUP "2:\n\t" PRODUCT_6X1_GROUP                                               \
                   "4:\n\t"                                                                                            \
                   "cmp    %[x], %[end]\n\t"                                                                           \
                   "bne    1b\n\t"                                                                                     \
                   "ldr    %[o], %[to_multiplier]\n\t"                                                                 \
                   "ldr    %[e], [%[t], %[o]]\n\t"                                                                     \
                   "ldr    %[o], %[to_shift]\n\t"                                                                      \
                   "ldr    %[x], [%[t], %[o]]\n\t"                                                                     \
                   "mvn    %[x], %[x]\n\t"                                                                             \
                   "add    %[t], %[t], #4\n\t"                                                                         \
                   "str    %[t], %[bias]\n\t"                                                                          \
                   "ldr    %[xe], %[offset21]\n\t"                                                                     \
                   "lsl    %[xe], %[xe], %[x]\n\t"                                                                     \
                   "ldr    %[xo], %[out]\n\t"                                                                          \
                   "add    %[t], %[xo], #1\n\t"                                                                        \
                   "str    %[t], %[out]\n\t"                                                                           \
                   "ldr    %[t], %[channels]\n\t" requantize(s0) "add    %[xo], %[xo], %[t]\n\t"                       \
                   requantize(s1) "add    %[xo], %[xo], %[t]\n\t"                                                      \
                   requantize(s2) "add    %[xo], %[xo], %[t]\n\t"                                                      \
                   requantize(s3) "add    %[xo], %[xo], %[t]\n\t"                                                      \
                   requantize(s4) "add    %[xo], %[xo], %[t]\n\t"                                                      \
                   requantize(s5)                                                                                      \
                   rewind                                                                                              \
                   "ldr    %[o], %[out_last]\n\t"                                                                      \
                   "cmp    %[xo], %[o]\n\t"                                                                            \
                   "bne    3b\n\t"                                                                                     \
                   : [s0] "=&r"(s0), [s1] "=&r"(s1), [s2] "=&r"(s2), [s3] "=&r"(s3), [s4] "=&r"(s4),                   \
                     [s5] "=&r"(s5), [w] "+r"(w), [x] "=&r"(x), [e] "=&r"(e), [o] "=&r"(o), [xe] "=&r"(xe),            \
                     [xo] "=&r"(xo), [t] "=&r"(t), [bias] "+m"(q.bias), [out] "+m"(q.out)                              \
                   : [end] "r"(end), [to_multiplier] "m"(q.to_multiplier), [to_shift] "m"(q.to_shift),                 \
                     [offset21] "m"(q.offset21), [channels] "m"(q.channels), [start] "m"(q.start),                     \
                     [back] "m"(q.back), [out_last] "m"(q.out_last)                                                    \
                   : "cc", "memory")

/* The next channel's weights, back bytes before w (the rounded-up k less k). */
#define REWIND                                                                                                         \
  "ldr    %[o], %[back]\n\t"                                                                                           \
  "sub    %[w], %[w], %[o]\n\t"

/* Six pixels from wide's six-pixel layout (columns of a multiple of 4 values, rounded up from k as wide_three's),
 * every channel (at least one), for a layer passing six_form(). odd: the group count is odd. */
BISUP_KERNEL_SPECIALISED void wide_six(const bisup_kernel_gemm *g, int8_t *out, int odd, int doubled) {
  const int32_t k = g->k, rounded = (k + 3) & ~3, channels = g->channels;
  const int32_t *end = wide + 3 * rounded;
  six_cursor q = {g->bias, (int32_t)((uintptr_t)g->multiplier - (uintptr_t)g->bias),
                  (int32_t)((uintptr_t)g->shift - (uintptr_t)g->bias), out, 2 * g->output_offset + 1, channels,
                  wide, rounded - k, out + 6 * channels - 1};
  const int8_t *w = g->weights;
  const int32_t *x;
  int32_t s0, s1, s2, s3, s4, s5, e, o, xe, xo, t;
  /* After the first group, an even count of groups left (maybe none) enters at the loop's test, an odd one at the
   * loop's second copy. */
  if (doubled && odd) { /* doubled: a 1 x 1 filter, k % 4 == 0, no rewind */
    PRODUCT_6X1_ALL("lsl    %[s0], %[s0], #1\n\t", "b      4f\n\t", REQUANTIZE_SIX_DOUBLED, "");
  } else if (doubled) {
    PRODUCT_6X1_ALL("lsl    %[s0], %[s0], #1\n\t", "b      2f\n\t", REQUANTIZE_SIX_DOUBLED, "");
  } else if (odd) {
    PRODUCT_6X1_ALL("", "b      4f\n\t", REQUANTIZE_SIX, REWIND);
  } else {
    PRODUCT_6X1_ALL("", "b      2f\n\t", REQUANTIZE_SIX, REWIND);
  }
}

/* 1 when wide_six's requantization is exact for every channel of a layer passing short_form() (sums below 2^30):
 * the activation range all of int8, multipliers >= 0, |offset21| << (-shift - 1) below 2^30. */
static int six_form(const bisup_kernel_gemm *g) {
  const int64_t offset21 = 2 * (int64_t)g->output_offset + 1;
  if (g->activation_min != -128 || g->activation_max != 127) return 0;
  for (int32_t c = 0; c < g->channels; ++c) {
    const int32_t e1 = -g->shift[c] - 1;
    if (g->multiplier[c] < 0 || (offset21 < 0 ? -offset21 : offset21) << e1 >= ((int64_t)1 << 30)) return 0;
  }
  return 1;
}

/* doubled: wide holds 2 x each value (widen_six's doubled). */
static void gemm_wide_six(const bisup_kernel_gemm *g, int8_t *out, int doubled) {
  const int odd = ((g->k + 3) >> 2) & 1;
  if (doubled) {
    (odd ? wide_six(g, out, 1, 1) : wide_six(g, out, 0, 1));
  } else {
    (odd ? wide_six(g, out, 1, 0) : wide_six(g, out, 0, 0));
  }
}

/* The activation range all of int8 (bisup_kernel_requantize_short's full) or not. */
static int full_range(const bisup_kernel_gemm *g) { return g->activation_min == -128 && g->activation_max == 127; }

static void gemm_wide_short(const bisup_kernel_gemm *g, int two, int8_t *out0, int8_t *out1) {
  if (full_range(g)) {
    wide_short(g, two, out0, out1, 1);
  } else {
    wide_short(g, two, out0, out1, 0);
  }
}

static void gemm_wide_three(const bisup_kernel_gemm *g, int32_t pixels, int8_t *out) {
  if (full_range(g)) {
    wide_three(g, pixels, out, 1);
  } else {
    wide_three(g, pixels, out, 0);
  }
}

static void gemm_wide(const bisup_kernel_gemm *g, int two, int8_t *out0, int8_t *out1) {
  int32_t acc0[BISUP_KERNEL_GEMM_BLOCK], acc1[BISUP_KERNEL_GEMM_BLOCK];
  for (int32_t c0 = 0; c0 < g->channels; c0 += BISUP_KERNEL_GEMM_BLOCK) {
    const int32_t c1 = g->channels - c0 < BISUP_KERNEL_GEMM_BLOCK ? g->channels : c0 + BISUP_KERNEL_GEMM_BLOCK;
    gemm_wide_block(g, two, c0, c1, acc0, acc1);
    bisup_kernel_gemm_requantize(g, acc0, c0, c1, out0);
    if (two) bisup_kernel_gemm_requantize(g, acc1, c0, c1, out1);
  }
}

int bisup_kernel_conv2d_dsp(const bisup_kernel_conv_params *p, const int8_t *input, int8_t *output) {
  const bisup_kernel_shape *out = &p->output;
  const int32_t k = p->filter_height * p->filter_width * p->input.depth;
  const int direct = p->filter_height == 1 && p->filter_width == 1 && p->pad_height == 0 && p->pad_width == 0;
  if (k > BISUP_KERNEL_CONV_DSP_COLUMN_MAX || (!direct && k > BISUP_KERNEL_CONV_COLUMN_MAX)) {
    return bisup_kernel_conv2d_gemm(p, input, output, bisup_kernel_gemm_rows_dsp);
  }
  const bisup_kernel_gemm g = {.weights = p->filter, .k = k, .channels = out->depth, .bias = p->folded_bias,
                               .multiplier = p->multiplier, .shift = p->shift, .per_channel = 1,
                               .output_offset = p->output_offset, .activation_min = p->activation_min,
                               .activation_max = p->activation_max,
                               .right_shifts = bisup_kernel_gemm_right_shifts(p->multiplier, p->shift, out->depth)};
  const int32_t plane = out->height * out->width, pixels = out->batches * plane;
  const int fused = short_form(&g);
  int32_t pending = 0, n0 = 0;
  /* Six by six (then three by three) where the activation range is all of int8 and the rounded-up column fits. */
  if (fused && six_form(&g) && ((k + 3) & ~3) <= BISUP_KERNEL_CONV_DSP_SIX_MAX && ((k & 3) == 0 || !direct)) {
    const bisup_kernel_shape *in = &p->input;
    const int contiguous = direct && p->stride_height == 1 && p->stride_width == 1; /* pixel n at input + n k */
    /* Doubling six pixels' values takes 3 k SADD16, and saves 5 instructions a channel (wide_six). */
    const int doubled = contiguous && 5 * g.channels > 3 * k;
    const int nine = !direct && p->filter_height == 3 && p->filter_width * in->depth == 9 && p->dilation_width == 1;
    const int32_t row_step = p->dilation_height * in->width * in->depth, last_y = 2 * p->dilation_height;
    int32_t b = 0, oy = 0, ox = 0; /* pixel n's, counted rather than divided for */
    for (; n0 + 6 <= pixels; n0 += 6) {
      if (contiguous && doubled) {
        widen_six(input + (size_t)n0 * k, k, 1);
        gemm_wide_six(&g, output + (size_t)n0 * out->depth, 1);
        continue;
      }
      if (contiguous) {
        widen_six(input + (size_t)n0 * k, k, 0);
        gemm_wide_six(&g, output + (size_t)n0 * out->depth, 0);
        continue;
      }
      const int32_t y6 = oy * p->stride_height - p->pad_height, x6 = ox * p->stride_width - p->pad_width;
      if (nine && ox + 6 <= out->width && y6 >= 0 && y6 + last_y < in->height && x6 >= 0 &&
          x6 + 5 * p->stride_width + p->filter_width - 1 < in->width) { /* six windows of one row inside */
        widen_six_rows_of_9(input + offset4(in, b, y6, x6, 0), row_step, p->stride_width * in->depth);
        gemm_wide_six(&g, output + (size_t)n0 * out->depth, 0);
        if ((ox += 6) == out->width) {
          ox = 0;
          if (++oy == out->height) oy = 0, ++b;
        }
        continue;
      }
      for (int32_t j = 0; j < 6; ++j) {
        const int32_t y0 = oy * p->stride_height - p->pad_height, x0 = ox * p->stride_width - p->pad_width;
        if (nine && y0 >= 0 && y0 + last_y < in->height && x0 >= 0 && x0 + p->filter_width - 1 < in->width) {
          widen_rows_of_9(input + offset4(in, b, y0, x0, 0), row_step, wide + 2 * j, 12); /* widen_window's */
        } else if (direct) {
          widen(input + offset4(&p->input, b, oy * p->stride_height, ox * p->stride_width, 0), k, wide + 2 * j,
                wide_tail[0], 12);
        } else {
          widen_window(p, input, b, oy, ox, wide + 2 * j, wide_tail[0], 12, 1);
        }
        if (++ox == out->width) {
          ox = 0;
          if (++oy == out->height) oy = 0, ++b;
        }
      }
      gemm_wide_six(&g, output + (size_t)n0 * out->depth, 0);
    }
  }
  /* Three by three where k % 4 == 0, or where an im2col column rounded up to a multiple of 4 takes it (a 1 x 1
   * filter's k % 4 tail is faster two by two). */
  if (fused && ((k + 3) & ~3) <= BISUP_KERNEL_CONV_DSP_THREE_MAX && ((k & 3) == 0 || !direct)) {
    for (int32_t n = n0; n < pixels; ++n) {
      const int32_t b = n / plane, oy = (n % plane) / out->width, ox = n % out->width;
      if (direct) {
        widen(input + offset4(&p->input, b, oy * p->stride_height, ox * p->stride_width, 0), k, wide + 2 * pending,
              wide_tail[pending], 6);
      } else {
        widen_window(p, input, b, oy, ox, wide + 2 * pending, wide_tail[pending], 6, 1);
      }
      if (++pending == 3) {
        gemm_wide_three(&g, 3, output + (size_t)(n - 2) * out->depth);
        pending = 0;
      }
    }
    if (pending) gemm_wide_three(&g, pending, output + (size_t)(pixels - pending) * out->depth);
    return 1;
  }
  for (int32_t n = 0; n < pixels; ++n) {
    const int32_t b = n / plane, oy = (n % plane) / out->width, ox = n % out->width;
    if (direct) {
      widen(input + offset4(&p->input, b, oy * p->stride_height, ox * p->stride_width, 0), k, wide + 2 * pending,
            wide_tail[pending], 4);
    } else {
      widen_window(p, input, b, oy, ox, wide + 2 * pending, wide_tail[pending], 4, 0);
    }
    if (++pending == 2) {
      (fused ? gemm_wide_short : gemm_wide)(&g, 1, output + (size_t)(n - 1) * out->depth,
                                            output + (size_t)n * out->depth);
      pending = 0;
    }
  }
  if (pending) (fused ? gemm_wide_short : gemm_wide)(&g, 0, output + (size_t)(pixels - 1) * out->depth, NULL);
  return 1;
}
#else
typedef int bisup_kernel_conv_dsp_unused; /* ISO C forbids an empty translation unit */
#endif
