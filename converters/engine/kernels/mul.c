/*
 * bisup int8 kernels: MUL (see bisup_kernels.h).
 *
 * Paths: both inputs of the output's shape (no broadcast) run as one flat loop; any other shapes take the 4-D
 * broadcast walk. Both: (x1 + offset1) x (x2 + offset2), requantized as TFLM does (mbqm_fast: equal to mbqm for the
 * multipliers the lowering computes).
 */
#include "bisup_kernel_internal.h"

static inline int8_t mul_one(const bisup_kernel_mul_params *p, int32_t x1, int32_t x2) {
  return requantize_fast((p->input1_offset + x1) * (p->input2_offset + x2), p->multiplier, p->shift,
                         p->output_offset, p->activation_min, p->activation_max);
}

static void mul(const bisup_kernel_mul_params *p, const int8_t *input1, const int8_t *input2, int8_t *output) {
  const bisup_kernel_shape *out = &p->output, *s1 = &p->input1, *s2 = &p->input2;
  const int32_t count = out->batches * out->height * out->width * out->depth;
  if (s1->batches * s1->height * s1->width * s1->depth == count &&
      s2->batches * s2->height * s2->width * s2->depth == count) { /* no dimension broadcast */
    for (int32_t i = 0; i < count; ++i) output[i] = mul_one(p, input1[i], input2[i]);
    return;
  }
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t y = 0; y < out->height; ++y) {
      for (int32_t x = 0; x < out->width; ++x) {
        for (int32_t c = 0; c < out->depth; ++c) {
          output[offset4(out, b, y, x, c)] =
              mul_one(p, input1[broadcast_offset(s1, b, y, x, c)], input2[broadcast_offset(s2, b, y, x, c)]);
        }
      }
    }
  }
}

void bisup_kernel_mul(const bisup_kernel_mul_params *p, const int8_t *input1, const int8_t *input2, int8_t *output) {
  mul(p, input1, input2, output);
}
