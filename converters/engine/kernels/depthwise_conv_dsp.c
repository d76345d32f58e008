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
 * A 3 x 3 filter (dilation 1, stride_width 1 or 2, filter_pairs from the lowering, which gives them only where the
 * short requantization below holds) has its own path. Each input row is widened once (prep_row) into int16 pairs
 * of adjacent columns (P_k: columns 2k, 2k + 1 of a channel, the input's zero point outside the input, as TFLM's
 * padding adds nothing), so one SMLAD multiplies two taps of a channel by the (w0, w1) pair of filter_pairs; the
 * pixel whose window starts at an odd column takes the top half of P_k (SMLATB) and P_k+1 crossed with (w2, w1)
 * (SMLADX). Sums start from interior_bias (taps need no input_offset), doubled for the requantization's SMMULR.
 * Stride-1 rows go two pixels at a time (row2_3x3: every load feeds both), the others one (row_3x3).
 *
 * Requantization: when every accumulator of the layer, after its channel's left shift, is below 2^30 in magnitude
 * (checked once per call from the biases, the tap count and the shifts; true of real models), srdhm is one SMMULR of
 * twice the accumulator (floor((2ab + 2^31) / 2^32) = floor((ab + 2^30) / 2^31), as in mbqm_fast) and the rounding
 * divide is mbqm_fast's; otherwise mbqm_fast itself. No scratch memory but the 3 x 3 path's slots (3.2 KB).
 */
#include "bisup_kernel_internal.h"

#if BISUP_KERNEL_DSP
#include <arm_acle.h>
#include <string.h>


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

/* Pairs of window columns the 3 x 3 path holds: 3.2 KB of static RAM, a tile of 78 output pixels at stride 1 (39 at
 * stride 2); a wider row goes tile by tile. */
#define BISUP_DW_PAIRS_MAX 40

/* What the row asm reads from memory besides its operands (thirteen registers are all GCC can give). */
typedef struct {
  int32_t offset21;  /* 2 output_offset + 1 */
  int32_t lo4, hi4;  /* activation_min / max in each byte */
  const int8_t *end; /* the output row's end (this group's channels of the pixel after its last) */
  int32_t step;      /* bytes from an output pixel to the next */
  const int8_t *end2; /* row2_3x3's end: after the row's last pair of pixels */
  int32_t clamp;     /* the activation range is not all of int8 (row2_3x3 skips the clamp otherwise) */
} pass_3x3;

/* Window row R of four channels: the pairs P_k (columns 2k, 2k+1 of each channel, at x + 16 R) and P_k+1 (80
 * bytes on), the row's weights W01 = (w0, w1) and W21 = (w2, w1) of each channel (at w + 16 + 32 R). PAIR multiplies
 * P_k: an even pixel (its first column 2k) both halves with SMLAD (x0 w0 + x1 w1), an odd one (first column 2k + 1)
 * the top half with SMLATB (x1 w0). NEXT multiplies P_k+1: even, its bottom half with SMLABB (x2 w2); odd, both
 * halves crossed with SMLADX (x2 w1 + x3 w2). */
#define BISUP_DW_ROW_ASM(PAIR, NEXT, X0, X1, X2, X3, W0, W1, W2, W3)                                               \
  "ldrd   %[d0], %[d1], [%[x], #" X0 "]\n\t"                                                                     \
  "ldrd   %[w0], %[w1], [%[w], #" W0 "]\n\t"                                                                     \
  PAIR "  %[a0], %[d0], %[w0], %[a0]\n\t" PAIR "  %[a1], %[d1], %[w1], %[a1]\n\t"                                \
  "ldrd   %[d0], %[d1], [%[x], #" X1 "]\n\t"                                                                     \
  "ldrd   %[w0], %[w1], [%[w], #" W1 "]\n\t"                                                                     \
  PAIR "  %[a2], %[d0], %[w0], %[a2]\n\t" PAIR "  %[a3], %[d1], %[w1], %[a3]\n\t"                                \
  "ldrd   %[d0], %[d1], [%[x], #" X2 "]\n\t"                                                                     \
  "ldrd   %[w0], %[w1], [%[w], #" W2 "]\n\t"                                                                     \
  NEXT "  %[a0], %[d0], %[w0], %[a0]\n\t" NEXT "  %[a1], %[d1], %[w1], %[a1]\n\t"                                \
  "ldrd   %[d0], %[d1], [%[x], #" X3 "]\n\t"                                                                     \
  "ldrd   %[w0], %[w1], [%[w], #" W3 "]\n\t"                                                                     \
  NEXT "  %[a2], %[d0], %[w0], %[a2]\n\t" NEXT "  %[a3], %[d1], %[w1], %[a3]\n\t"

/* One channel's requantization: A = 2 acc (the doubled sums), (multiplier, e1 = -shift - 1) at w + W, offset21 in
 * d0: bisup_kernel_requantize_short with its doubling done by the weights and the start, clamped to int8. */
#define BISUP_DW_REQUANT_ASM(A, W)              \
  "ldrd   %[w0], %[w1], [%[w], #" W "]\n\t"     \
  "smmulr " A ", " A ", %[w0]\n\t"              \
  "add    " A ", " A ", " A ", asr #31\n\t"     \
  "asr    " A ", " A ", %[w1]\n\t"              \
  "add    " A ", " A ", %[d0]\n\t"              \
  "ssat   " A ", #8, " A ", asr #1\n\t"

/* Four channels of one output pixel, stored as one word at o, then o += step: the sums start from the doubled
 * interior_bias, add the three window rows, are requantized, packed and clamped to [lo, hi] (SSUB8 sets each
 * byte's GE flag, SEL keeps the larger, then the smaller). w: the group's 36 words of filter_pairs. 83
 * instructions for 36 multiply-accumulates. */
#define BISUP_DW_PIXEL_ASM(PAIR, NEXT)                                                                             \
  "ldrd   %[a0], %[a1], [%[w]]\n\t"                                                                              \
  "ldrd   %[a2], %[a3], [%[w], #8]\n\t"                                                                          \
  BISUP_DW_ROW_ASM(PAIR, NEXT, "0", "8", "80", "88", "16", "24", "32", "40")                                     \
  BISUP_DW_ROW_ASM(PAIR, NEXT, "16", "24", "96", "104", "48", "56", "64", "72")                                  \
  BISUP_DW_ROW_ASM(PAIR, NEXT, "32", "40", "112", "120", "80", "88", "96", "104")                                \
  "ldr    %[d0], [%[q]]\n\t"                                                                                     \
  BISUP_DW_REQUANT_ASM("%[a0]", "112") BISUP_DW_REQUANT_ASM("%[a1]", "120")                                      \
  BISUP_DW_REQUANT_ASM("%[a2]", "128") BISUP_DW_REQUANT_ASM("%[a3]", "136")                                      \
  "bfi    %[a0], %[a1], #8, #8\n\t"                                                                              \
  "bfi    %[a0], %[a2], #16, #8\n\t"                                                                             \
  "bfi    %[a0], %[a3], #24, #8\n\t"                                                                             \
  "ldrd   %[w0], %[w1], [%[q], #4]\n\t"                                                                          \
  "ssub8  %[d1], %[a0], %[w0]\n\t"                                                                               \
  "sel    %[a0], %[a0], %[w0]\n\t"                                                                               \
  "ssub8  %[d1], %[w1], %[a0]\n\t"                                                                               \
  "sel    %[a0], %[a0], %[w1]\n\t"                                                                               \
  "str    %[a0], [%[o]]\n\t"                                                                                     \
  "add    %[o], %[o], %[step]\n\t"                                                                               \
  "ldr    %[d0], [%[q], #12]\n\t"                                                                                \
  "cmp    %[o], %[d0]\n\t"

/* Four channels of a row of even output pixels (stride 2; or one pixel), x at the first one's pair of columns in
 * row 0's slot, the next pixel's at the next pair, each stored at o, o + step, ... until o reaches q->end. */
BISUP_KERNEL_SPECIALISED void row_3x3(const int32_t *x, const int32_t *w, int8_t *o, int32_t step,
                                      const pass_3x3 *q) {
  int32_t a0, a1, a2, a3, d0, d1, w0, w1;
  __asm__ volatile("1:\n\t" BISUP_DW_PIXEL_ASM("smlad ", "smlabb") "add    %[x], %[x], #80\n\t"
                   "bne    1b"
                   : [a0] "=&r"(a0), [a1] "=&r"(a1), [a2] "=&r"(a2), [a3] "=&r"(a3), [d0] "=&r"(d0), [d1] "=&r"(d1),
                     [w0] "=&r"(w0), [w1] "=&r"(w1), [x] "+r"(x), [o] "+r"(o)
                   : [w] "r"(w), [q] "r"(q), [step] "r"(step)
                   : "cc", "memory");
}

/* row2_3x3's product of one pair of channels (c, c + 1: the accumulators A0, A1 of the even pixel, B0, B1 of
 * the odd one) and one pair of window columns: their int16 pairs from x + XO (r10, r11), the two channels' weight
 * words from w + WO (r12, lr), E for the even pixel and O for the odd one (BISUP_DW_ROW_ASM's PAIR and NEXT). */
#define BISUP_DW2_MAC(XO, WO, E, O, A0, A1, B0, B1)                                                               \
  "ldrd   r10, r11, [r0, #" XO "]\n\t"                                                                           \
  "ldrd   r12, lr, [r1, #" WO "]\n\t"                                                                            \
  E "  " A0 ", r10, r12, " A0 "\n\t" E "  " A1 ", r11, lr, " A1 "\n\t"                                            \
  O "  " B0 ", r10, r12, " B0 "\n\t" O "  " B1 ", r11, lr, " B1 "\n\t"

/* One window row of row2_3x3 (x + 16 R, w + 16 + 32 R): P_k, then P_k+1, each for channels 0, 1 and 2, 3. */
#define BISUP_DW2_ROW(X0, X1, X2, X3, W0, W1, W2, W3)                                                             \
  BISUP_DW2_MAC(X0, W0, "smlad ", "smlatb", "r2", "r3", "r6", "r7")                                              \
  BISUP_DW2_MAC(X1, W1, "smlad ", "smlatb", "r4", "r5", "r8", "r9")                                              \
  BISUP_DW2_MAC(X2, W2, "smlabb", "smladx", "r2", "r3", "r6", "r7")                                              \
  BISUP_DW2_MAC(X3, W3, "smlabb", "smladx", "r4", "r5", "r8", "r9")

/* Channel i of both pixels (A, B): (multiplier, e1) from w + W, offset21 in r10, as BISUP_DW_REQUANT_ASM. */
#define BISUP_DW2_REQUANT(W, A, B)                                                                                \
  "ldrd   r12, lr, [r1, #" W "]\n\t"                                                                             \
  "smmulr " A ", " A ", r12\n\t"                                                                                  \
  "smmulr " B ", " B ", r12\n\t"                                                                                  \
  "add    " A ", " A ", " A ", asr #31\n\t"                                                                       \
  "add    " B ", " B ", " B ", asr #31\n\t"                                                                       \
  "asr    " A ", " A ", lr\n\t"                                                                                   \
  "asr    " B ", " B ", lr\n\t"                                                                                   \
  "add    " A ", " A ", r10\n\t"                                                                                  \
  "add    " B ", " B ", r10\n\t"                                                                                  \
  "ssat   " A ", #8, " A ", asr #1\n\t"                                                                           \
  "ssat   " B ", #8, " B ", asr #1\n\t"

/* The four bytes of R clamped to [lo4, hi4] (r12, lr), as BISUP_DW_PIXEL_ASM. */
#define BISUP_DW2_CLAMP(R)                                                                                        \
  "ssub8  r10, " R ", r12\n\t"                                                                                    \
  "sel    " R ", " R ", r12\n\t"                                                                                  \
  "ssub8  r10, lr, " R "\n\t"                                                                                     \
  "sel    " R ", " R ", lr\n\t"

/* The stride-2 counterpart of BISUP_DW2_MAC, channels c, c + 1 of one window row: the even pixel A takes P_k
 * (x + XA) with W01 (w + WA) and the bottom of P_k+1 (x + XB) with W21 (w + WB), the next one B P_k+1 with W01 and
 * the bottom of P_k+2 (x + XC) with W21: three loads of pairs and two of weights for both pixels. */
#define BISUP_DW2S_MAC(XA, XB, XC, WA, WB, A0, A1, B0, B1)                                                       \
  "ldrd   r10, r11, [r0, #" XA "]\n\t"                                                                           \
  "ldrd   r12, lr, [r1, #" WA "]\n\t"                                                                            \
  "smlad  " A0 ", r10, r12, " A0 "\n\tsmlad  " A1 ", r11, lr, " A1 "\n\t"                                         \
  "ldrd   r10, r11, [r0, #" XB "]\n\t"                                                                           \
  "smlad  " B0 ", r10, r12, " B0 "\n\tsmlad  " B1 ", r11, lr, " B1 "\n\t"                                         \
  "ldrd   r12, lr, [r1, #" WB "]\n\t"                                                                            \
  "smlabb " A0 ", r10, r12, " A0 "\n\tsmlabb " A1 ", r11, lr, " A1 "\n\t"                                         \
  "ldrd   r10, r11, [r0, #" XC "]\n\t"                                                                           \
  "smlabb " B0 ", r10, r12, " B0 "\n\tsmlabb " B1 ", r11, lr, " B1 "\n\t"

/* Four channels of a row's pixels two at a time (x as row_3x3's for the first; STEP bytes on for the next pair)
 * until o reaches q->end2, TAPS their products: each load of int16 pairs and of weights (LDRD) feeds both pixels,
 * with fourteen registers (every one but sp and pc) where GCC's inline asm would give thirteen. Stride 1
 * (row2_3x3): an even pixel and the odd one after it, 72 instructions for their 72 products instead of 96, about
 * 149 in all instead of 176; stride 2 (row2s_3x3): two even pixels, 78 for the products. The caller gives at least
 * one pair. o and q live on the stack (pushed with r2, r3). */
#define BISUP_DW2_ARG __attribute__((unused)) /* read by the asm, in r0..r3 */
#define BISUP_DW2_FUNCTION(NAME, TAPS, STEP)                                                                      \
  __attribute__((naked, noinline)) static void NAME(BISUP_DW2_ARG const int32_t *x, BISUP_DW2_ARG const int32_t *w, \
                                                    BISUP_DW2_ARG int8_t *o, BISUP_DW2_ARG const pass_3x3 *q) {     \
    __asm__ volatile("push   {r2-r11, lr}\n1:\n\t"                                                                 \
                     "ldrd   r2, r3, [r1]\n\tldrd   r4, r5, [r1, #8]\n\t"                                          \
                     "ldrd   r6, r7, [r1]\n\tldrd   r8, r9, [r1, #8]\n\t" TAPS                                     \
                     "ldr    r11, [sp, #4]\n\tldr    r10, [r11]\n\t"                                               \
                     BISUP_DW2_REQUANT("112", "r2", "r6") BISUP_DW2_REQUANT("120", "r3", "r7")                    \
                     BISUP_DW2_REQUANT("128", "r4", "r8") BISUP_DW2_REQUANT("136", "r5", "r9")                    \
                     "bfi    r2, r3, #8, #8\n\tbfi    r2, r4, #16, #8\n\tbfi    r2, r5, #24, #8\n\t"              \
                     "bfi    r6, r7, #8, #8\n\tbfi    r6, r8, #16, #8\n\tbfi    r6, r9, #24, #8\n\t"              \
                     "ldr    r3, [r11, #24]\n\tcbz    r3, 2f\n\tldrd   r12, lr, [r11, #4]\n\t"               \
                     BISUP_DW2_CLAMP("r2") BISUP_DW2_CLAMP("r6") "2:\n\t"                                      \
                     "ldr    r10, [sp]\n\tldr    r12, [r11, #16]\n\t"                                              \
                     "str    r2, [r10]\n\tstr    r6, [r10, r12]\n\t"                                               \
                     "add    r10, r10, r12, lsl #1\n\tstr    r10, [sp]\n\t"                                        \
                     "ldr    r12, [r11, #20]\n\tadd    r0, r0, #" STEP "\n\tcmp    r10, r12\n\tbne    1b\n\t"      \
                     "add    sp, sp, #8\n\tpop    {r4-r11, pc}");                                                  \
  }
BISUP_DW2_FUNCTION(row2_3x3,
                   BISUP_DW2_ROW("0", "8", "80", "88", "16", "24", "32", "40")
                   BISUP_DW2_ROW("16", "24", "96", "104", "48", "56", "64", "72")
                   BISUP_DW2_ROW("32", "40", "112", "120", "80", "88", "96", "104"), "80")
BISUP_DW2_FUNCTION(row2s_3x3,
                   BISUP_DW2S_MAC("0", "80", "160", "16", "32", "r2", "r3", "r6", "r7")
                   BISUP_DW2S_MAC("8", "88", "168", "24", "40", "r4", "r5", "r8", "r9")
                   BISUP_DW2S_MAC("16", "96", "176", "48", "64", "r2", "r3", "r6", "r7")
                   BISUP_DW2S_MAC("24", "104", "184", "56", "72", "r4", "r5", "r8", "r9")
                   BISUP_DW2S_MAC("32", "112", "192", "80", "96", "r2", "r3", "r6", "r7")
                   BISUP_DW2S_MAC("40", "120", "200", "88", "104", "r4", "r5", "r8", "r9"), "160")

/* Per pair of window columns k, five slots of four words: slot m holds an input row y with y mod 3 = m, slots 3
 * and 4 the rows of slots 0 and 1 again, so that the rows of every window are three slots in a row. */
static int32_t slots[BISUP_DW_PAIRS_MAX * 20];

/* The pair of columns a, b's words of four channels into dst (and dst + 12, dup) as int16 pairs, a in the bottom
 * half: channel i's in dst[i]. PKHBT / PKHTB pair the columns' halves, SXTB16 widens, STRD stores two. */
static inline void put_pair(int32_t *dst, int32_t xa, int32_t xb, int dup) {
  int32_t lo, hi, v0, v1;
  __asm__ volatile("pkhbt  %[lo], %[xa], %[xb], lsl #16\n\t"
          "pkhtb  %[hi], %[xb], %[xa], asr #16\n\t"
          "sxtb16 %[v0], %[lo]\n\t"
          "sxtb16 %[v1], %[lo], ror #8\n\t"
          "strd   %[v0], %[v1], [%[d]]\n\t"
          "sxtb16 %[lo], %[hi]\n\t"
          "sxtb16 %[hi], %[hi], ror #8\n\t"
          "strd   %[lo], %[hi], [%[d], #8]"
          : [lo] "=&r"(lo), [hi] "=&r"(hi), [v0] "=&r"(v0), [v1] "=&r"(v1)
          : [xa] "r"(xa), [xb] "r"(xb), [d] "r"(dst)
          : "memory");
  if (dup) {
    __asm__ volatile("strd   %[v0], %[v1], [%[d], #48]\n\t"
            "strd   %[lo], %[hi], [%[d], #56]"
            :
            : [v0] "r"(v0), [v1] "r"(v1), [lo] "r"(lo), [hi] "r"(hi), [d] "r"(dst)
            : "memory");
  }
}

/* What prep_row needs of the layer and the tile, computed once per tile. */
typedef struct {
  int32_t zp4;          /* the input's zero point in each byte */
  int32_t k0, k1;       /* the tile's pairs [k0, k1) have both columns inside the input */
  int32_t pairs, depth, width;
  int32_t origin;       /* the input column of the tile's pair 0's first column (2 x its first pair - pad) */
  int32_t left;         /* pair 0 is the input's left edge with pad 1: column -1 outside, 0 inside */
  int32_t last;         /* pair k1's first column is the input's last (width + pad odd) */
} prep_3x3;

/* Input row y of channels c..c+3 into slot m = y mod 3 (and its copy), the tile's pair k from columns
 * origin + 2k, origin + 2k + 1: the input's zero point where y or a column is outside the input
 * (x + input_offset = 0 adds nothing, as TFLM's padding). row: the row's channel c, NULL outside the input. Left
 * of k0 (the left edge, pad 1: pair 0) the first column is outside, from k1 on the second, from k1 + 1 on both
 * (pad <= 1: a 3 x 3 filter's). */
__attribute__((noinline)) static void prep_row(const prep_3x3 *r, const int8_t *row, int32_t m, int32_t groups) {
  const int32_t zp4 = r->zp4, depth = r->depth, width = r->width, pairs = r->pairs, dup = m < 2;
  int32_t *dst = slots + 4 * m;
  if (!row) {
    for (int32_t k = 0; k < pairs * groups; ++k) put_pair(dst + 20 * k, zp4, zp4, dup);
    return;
  }
  for (int32_t g = 0; g < groups; ++g, row += 4, dst += 20 * pairs) {
    if (r->left) put_pair(dst, zp4, word(row), dup); /* pad 1: columns -1 (outside) and 0 */
    const int8_t *src = row + (2 * r->k0 + r->origin) * depth;
    int32_t *d = dst + 20 * r->k0, *const e = dst + 20 * r->k1;
    if (dup) {
      for (; d != e; d += 20, src += 2 * depth) put_pair(d, word(src), word(src + depth), 1);
    } else {
      for (; d != e; d += 20, src += 2 * depth) put_pair(d, word(src), word(src + depth), 0);
    }
    int32_t xa = r->last ? word(row + (width - 1) * depth) : zp4; /* pair k1's first column: width - 1 or width */
    for (int32_t k = r->k1; k < pairs; ++k, xa = zp4) put_pair(dst + 20 * k, xa, zp4, dup);
  }
}

/* prep_row's view of output columns ox0 .. ox0 + width - 1 (ox0 x stride_width even, so the tile's pairs are the
 * row's pairs from ox0 x stride_width / 2 on): which of them are inside the input, and where its edges fall. */
static prep_3x3 tile_prep(const bisup_kernel_depthwise_params *p, int32_t ox0, int32_t pairs) {
  const bisup_kernel_shape *in = &p->input;
  const int32_t base = ox0 * p->stride_width >> 1, edge = (in->width + p->pad_width) >> 1; /* the row's k1 */
  const int32_t first = (p->pad_width + 1) >> 1;                                             /* the row's k0 */
  int32_t k1 = edge - base, k0 = first - base;
  k1 = k1 < 0 ? 0 : (k1 < pairs ? k1 : pairs);
  k0 = k0 < 0 ? 0 : (k0 < k1 ? k0 : k1);
  const int32_t last = ((in->width + p->pad_width) & 1) && edge >= base && edge < base + pairs;
  const prep_3x3 r = {(int32_t)((uint32_t)(uint8_t)-p->input_offset * 0x01010101u), k0, k1, pairs, in->depth,
                      in->width, 2 * base - p->pad_width, base == 0 && first > 0 && k1 > 0, last};
  return r;
}

/* The 3 x 3 path over output columns ox0 .. ox0 + width - 1 and channels 0..depth & ~3: as many groups of four
 * channels at a time as the slots hold (outermost), each input row of them prepared once (prep_row), then every
 * output pixel of the tile's row from the slots (border pixels too: the slots hold the zero point outside). */
static void tile_3x3(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output, int32_t ox0,
                     int32_t width) {
  const bisup_kernel_shape *in = &p->input, *out = &p->output;
  const int32_t sw = p->stride_width, pairs = ((width - 1) * sw >> 1) + 2, odd = sw == 1;
  const int32_t row_bytes = out->width * out->depth, in_row = in->width * in->depth, sh = p->stride_height;
  const int32_t groups = out->depth >> 2, chunk = BISUP_DW_PAIRS_MAX / pairs, tile_bytes = width * out->depth;
  const uint32_t bytes = 0x01010101u;
  pass_3x3 q = {2 * p->output_offset + 1, (int32_t)((uint32_t)(uint8_t)p->activation_min * bytes),
                (int32_t)((uint32_t)(uint8_t)p->activation_max * bytes), NULL, out->depth, NULL,
                p->activation_min != -128 || p->activation_max != 127};
  const int32_t twos = (width >> 1) * 2 * out->depth; /* bytes of a row row2 writes */
  void (*const row2)(const int32_t *, const int32_t *, int8_t *, const pass_3x3 *) = odd ? row2_3x3 : row2s_3x3;
  const prep_3x3 r = tile_prep(p, ox0, pairs);
  for (int32_t b = 0; b < out->batches; ++b) {
    const int8_t *image = input + offset4(in, b, 0, 0, 0);
    for (int32_t g0 = 0; g0 < groups; g0 += chunk) {
      const int32_t n = groups - g0 < chunk ? groups - g0 : chunk;
      int8_t *o_row = output + offset4(out, b, 0, ox0, 4 * g0);
      /* y0: the window's first row, m0 its slot; next: the next input row to prepare, m its slot */
      int32_t y0 = -p->pad_height, m0 = (y0 + 3) % 3, next = y0, m = m0;
      for (int32_t oy = 0; oy < out->height; ++oy, o_row += row_bytes) {
        if (next < y0) {
          next = y0;
          m = m0;
        }
        for (; next < y0 + 3; ++next, m = m == 2 ? 0 : m + 1) {
          prep_row(&r, next >= 0 && next < in->height ? image + next * in_row + 4 * g0 : NULL, m, n);
        }
        for (int32_t g = 0; g < n; ++g) {
          const int32_t *w = p->filter_pairs + 36 * (g0 + g), *x = slots + 4 * m0 + 20 * pairs * g;
          int8_t *o = o_row + 4 * g;
          q.end = o + tile_bytes;
          if (twos) { /* pairs of pixels, then the last one alone (an odd width) */
            q.end2 = o + twos;
            row2(x, w, o, &q);
            if (twos != tile_bytes) row_3x3(x + 20 * sw * (width >> 1), w, o + twos, out->depth, &q);
          } else {
            row_3x3(x, w, o, out->depth, &q); /* a single pixel */
          }
        }
        y0 += sh;
        m0 = (m0 + sh) % 3;
      }
    }
  }
}

/* The 3 x 3 path (dilation 1, stride_width 1 or 2) in tiles of as many output columns as the slots hold (78 at
 * stride 1, 39 at stride 2; a tile starts at an even input column, so its pairs are the row's); the windows of
 * neighbouring tiles share a pair, prepared once for each. */
static void depthwise_3x3(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output) {
  const int32_t sw = p->stride_width, width = p->output.width;
  const int32_t tile = sw == 1 ? 2 * (BISUP_DW_PAIRS_MAX - 1) : BISUP_DW_PAIRS_MAX - 1;
  for (int32_t ox0 = 0; ox0 < width; ox0 += tile) {
    tile_3x3(p, input, output, ox0, width - ox0 < tile ? width - ox0 : tile);
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
  int32_t c0 = 0; /* the channels from c0 on take the general path below */
  /* filter_pairs: the lowering gives them only where the short requantization holds (every shift a right shift,
   * every doubled sum inside int32), which the general path below checks for itself */
  if (p->filter_pairs && p->filter_height == 3 && p->filter_width == 3 && p->interior_bias &&
      p->dilation_height == 1 && p->dilation_width == 1 && p->stride_width <= 2 && p->pad_width <= 1) {
    depthwise_3x3(p, input, output);
    c0 = out->depth & ~3;
    if (c0 == out->depth) return 1;
  }
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
          for (int32_t c = c0; c < out->depth; ++c) o[c] = output_of(&r, bias_of(p, c), c);
          continue;
        }
        const int8_t *x = input + offset4(in, b, y0 + fy0 * p->dilation_height, x0 + fx0 * p->dilation_width, 0);
        pixel_taps(p, &r, off2, x, o, fy0, fy1, fx0, fx1, c0);
      }
    }
  }
  return 1;
}
#else
typedef int bisup_kernel_depthwise_dsp_unused; /* ISO C forbids an empty translation unit */
#endif
