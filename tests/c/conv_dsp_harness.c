/*
 * The DSP CONV_2D (bisup_kernel_conv2d_dsp) against the portable product (bisup_kernel_conv2d_gemm with
 * bisup_kernel_gemm_rows, which the host tests check against tflite-micro) on the emulated Cortex-M4 / M7 / M33,
 * every output byte, over pseudo-random layers aimed at the DSP paths: 1 x 1 filters at stride 1 (six consecutive
 * pixels, values doubled or not, odd and even group counts, pixel counts with a rest) and stride 2, 3 x 3 filters on
 * 3 channels at stride 2 (six windows of a row at once, border windows) and on 3 to 8 channels at stride 1, with
 * the whole int8 activation range or a clamp, multipliers above 1 now and then (the unfused paths). A whole model's
 * scores (tests/test_engine_conv.py) hide a one-value error in a widened column; these bytes do not.
 * tests/test_engine_conv.py builds it with the board's shared part and reads its one answer:
 *   "CDSP", then little-endian words: layers checked, output bytes checked, bytes that differ, the first layer
 *   that differs and its first differing byte's index (zeros when none does).
 */
#include <stdint.h>
#include <string.h>

#include "bisup_kernel_internal.h"
#include "board.h"
#include "harness_random.h"

#if !BISUP_KERNEL_DSP
#error "this check is for a build with the DSP kernels (-mcpu=cortex-m4/m7/m33, not BISUP_KERNELS_PORTABLE)"
#endif

#define LAYERS 240
#define MAX_CHANNELS 40
#define MAX_INPUT (2 * 20 * 30 * 64)
#define MAX_FILTER (MAX_CHANNELS * 3 * 3 * 8)
#define MAX_OUTPUT (2 * 20 * 30 * MAX_CHANNELS)

static int8_t input[MAX_INPUT], filter[MAX_FILTER + 3], want[MAX_OUTPUT], got[MAX_OUTPUT];
static int32_t bias[MAX_CHANNELS], multiplier[MAX_CHANNELS], shift[MAX_CHANNELS], sums[MAX_CHANNELS],
    folded[MAX_CHANNELS];

static int32_t draw(uint32_t *state, int32_t lo, int32_t hi) { /* in [lo, hi] */
  return lo + (int32_t)(next_random(state) % (uint32_t)(hi - lo + 1));
}

/* One layer's output size and padding along one axis, SAME or VALID (TFLM's). */
static void axis(int32_t in, int32_t filter_size, int32_t stride, int same, int32_t *out, int32_t *pad) {
  *out = same ? (in + stride - 1) / stride : (in - filter_size) / stride + 1;
  const int32_t total = (*out - 1) * stride + filter_size - in;
  *pad = same && total > 0 ? total / 2 : 0;
}

/* Layer n's shape (its family n % 4) and values, in p and the static arrays. */
static void make_layer(int n, uint32_t *state, bisup_kernel_conv_params *p) {
  static const int32_t pointwise_depths[8] = {4, 8, 12, 16, 20, 32, 48, 64};
  const int family = n % 4;
  int32_t fh = 1, fw = 1, depth, stride = 1, same = 0;
  if (family == 0 || family == 1) { /* 1 x 1, stride 1 or 2 */
    depth = pointwise_depths[draw(state, 0, 7)];
    stride = family + 1;
  } else if (family == 2) { /* the RGB first layer */
    fh = fw = 3, depth = 3, stride = 2, same = draw(state, 0, 3) != 0;
  } else {
    fh = fw = 3, depth = draw(state, 3, 8), same = draw(state, 0, 1);
  }
  bisup_kernel_shape *in = &p->input, *out = &p->output;
  in->batches = draw(state, 0, 4) == 0 ? 2 : 1;
  in->height = draw(state, fh, 20);
  in->width = draw(state, fw, 30);
  in->depth = depth;
  out->batches = in->batches;
  out->depth = draw(state, 1, MAX_CHANNELS);
  axis(in->height, fh, stride, same, &out->height, &p->pad_height);
  axis(in->width, fw, stride, same, &out->width, &p->pad_width);
  p->filter_height = fh, p->filter_width = fw;
  p->stride_height = p->stride_width = stride;
  p->dilation_height = p->dilation_width = 1;
  p->input_offset = -draw(state, -128, 127);
  p->output_offset = draw(state, -128, 127);
  const int full = draw(state, 0, 3) != 0;
  p->activation_min = full ? -128 : (p->output_offset > -128 ? p->output_offset : -128);
  p->activation_max = full ? 127 : draw(state, p->activation_min, 127);
  const int32_t k = fh * fw * depth, values = in->batches * in->height * in->width * depth;
  int32_t log_k = 0;
  while ((1 << log_k) < k) ++log_k;
  for (int32_t i = 0; i < values; ++i) input[i] = (int8_t)draw(state, -128, 127);
  for (int32_t c = 0; c < out->depth; ++c) {
    int32_t sum = 0;
    for (int32_t i = 0; i < k; ++i) sum += filter[c * k + i] = (int8_t)draw(state, -127, 127);
    sums[c] = sum;
    bias[c] = draw(state, -40000, 40000);
    folded[c] = (int32_t)((uint32_t)bias[c] + (uint32_t)p->input_offset * (uint32_t)sum);
    multiplier[c] = (int32_t)(next_random(state) >> 1 | 1u << 30);
    /* Outputs spread over int8: sums of k products of about 74 x 74 scaled by about 2^-(7 + log2(k) / 2). */
    shift[c] = draw(state, 0, 15) == 0 ? draw(state, 0, 1) : -7 - log_k / 2 + draw(state, -2, 2);
  }
  p->filter = filter, p->bias = bias, p->multiplier = multiplier, p->shift = shift;
  p->filter_sums = sums, p->folded_bias = folded;
}

int main(void) {
  bisup_board_init();
  uint32_t state = 2463534242u, layers = 0, bytes = 0, differ = 0, first_layer = 0, first_byte = 0;
  for (int n = 0; n < LAYERS; ++n) {
    bisup_kernel_conv_params p;
    memset(&p, 0, sizeof p);
    make_layer(n, &state, &p);
    const bisup_kernel_shape *out = &p.output;
    const int32_t count = out->batches * out->height * out->width * out->depth;
    memset(want, 0x55, (size_t)count);
    memset(got, 0x2a, (size_t)count);
    if (!bisup_kernel_conv2d_gemm(&p, input, want, bisup_kernel_gemm_rows)) continue;
    if (!bisup_kernel_conv2d_dsp(&p, input, got)) continue;
    ++layers;
    for (int32_t i = 0; i < count; ++i, ++bytes) {
      if (got[i] != want[i] && differ++ == 0) first_layer = (uint32_t)n, first_byte = (uint32_t)i;
    }
  }
  const uint32_t words[5] = {layers, bytes, differ, first_layer, first_byte};
  bisup_board_write((const uint8_t *)"CDSP", 4);
  bisup_board_write((const uint8_t *)words, sizeof words);
  for (;;) {
  }
}
