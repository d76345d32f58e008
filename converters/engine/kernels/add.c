/* bisup int8 kernels: ADD and SUB (see bisup_kernels.h). */
#include "bisup_kernel_internal.h"

static int32_t scale_down(int32_t x, int32_t multiplier, int32_t shift) { /* shift <= 0 */
  return rdbp(srdhm(x, multiplier),
                                             (int)-shift);
}

static void add_or_sub(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output,
                       int32_t sign) {
  const bisup_kernel_shape *out = &p->output;
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t y = 0; y < out->height; ++y) {
      for (int32_t x = 0; x < out->width; ++x) {
        for (int32_t c = 0; c < out->depth; ++c) {
          int32_t a = p->input1_offset + input1[broadcast_offset(&p->input1, b, y, x, c)];
          int32_t v = p->input2_offset + input2[broadcast_offset(&p->input2, b, y, x, c)];
          int32_t sa = scale_down((int32_t)((uint32_t)a << p->left_shift), p->input1_multiplier, p->input1_shift);
          int32_t sv = scale_down((int32_t)((uint32_t)v << p->left_shift), p->input2_multiplier, p->input2_shift);
          int32_t raw = scale_down(sa + sign * sv, p->output_multiplier, p->output_shift) + p->output_offset;
          output[offset4(out, b, y, x, c)] = (int8_t)clamp32(raw, p->activation_min, p->activation_max);
        }
      }
    }
  }
}

void bisup_kernel_add(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output) {
#if BISUP_KERNEL_MVE
  if (bisup_kernel_add_mve(p, input1, input2, output, 1)) return;
#endif
  add_or_sub(p, input1, input2, output, 1);
}

void bisup_kernel_sub(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output) {
#if BISUP_KERNEL_MVE
  if (bisup_kernel_add_mve(p, input1, input2, output, -1)) return;
#endif
  add_or_sub(p, input1, input2, output, -1);
}
