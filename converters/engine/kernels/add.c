/*
 * bisup int8 kernels: ADD and SUB (see bisup_kernels.h).
 *
 * Paths: both inputs of the output's shape (no broadcast: residual connections) run as one flat loop; any other
 * shapes take the 4-D broadcast walk. Both use TFLM's arithmetic: each input plus its offset, shifted left by
 * left_shift (20), scaled down by its multiplier; the sum (or difference) scaled down by the output multiplier.
 * Every scaling is TFLM's MultiplyByQuantizedMultiplierSmallerThanOneExp (mbqm_fast: equal to it for the
 * multipliers and shifts <= 0 the lowering computes).
 */
#include "bisup_kernel_internal.h"

static inline int8_t add_one(const bisup_kernel_add_params *p, int32_t x1, int32_t x2, int32_t sign) {
  const int32_t a = (int32_t)((uint32_t)(p->input1_offset + x1) << p->left_shift); /* |a| <= 255 x 2^20 */
  const int32_t v = (int32_t)((uint32_t)(p->input2_offset + x2) << p->left_shift);
  const int32_t sa = mbqm_fast(a, p->input1_multiplier, p->input1_shift);
  const int32_t sv = mbqm_fast(v, p->input2_multiplier, p->input2_shift);
  const int32_t raw = mbqm_fast(sa + sign * sv, p->output_multiplier, p->output_shift) + p->output_offset;
  return (int8_t)clamp32(raw, p->activation_min, p->activation_max);
}

static int32_t elements(const bisup_kernel_shape *s) { return s->batches * s->height * s->width * s->depth; }

static void add_or_sub(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output,
                       int32_t sign) {
  const bisup_kernel_shape *out = &p->output;
  const int32_t count = elements(out);
  if (elements(&p->input1) == count && elements(&p->input2) == count) { /* no dimension broadcast */
    for (int32_t i = 0; i < count; ++i) output[i] = add_one(p, input1[i], input2[i], sign);
    return;
  }
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t y = 0; y < out->height; ++y) {
      for (int32_t x = 0; x < out->width; ++x) {
        for (int32_t c = 0; c < out->depth; ++c) {
          output[offset4(out, b, y, x, c)] = add_one(p, input1[broadcast_offset(&p->input1, b, y, x, c)],
                                                     input2[broadcast_offset(&p->input2, b, y, x, c)], sign);
        }
      }
    }
  }
}

void bisup_kernel_add(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output) {
  add_or_sub(p, input1, input2, output, 1);
}

void bisup_kernel_sub(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output) {
  add_or_sub(p, input1, input2, output, -1);
}
