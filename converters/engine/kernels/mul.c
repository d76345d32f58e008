/* bisup int8 kernels: MUL (see bisup_kernels.h). */
#include "bisup_kernel_internal.h"

void bisup_kernel_mul(const bisup_kernel_mul_params *p, const int8_t *input1, const int8_t *input2, int8_t *output) {
  const bisup_kernel_shape *out = &p->output;
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t y = 0; y < out->height; ++y) {
      for (int32_t x = 0; x < out->width; ++x) {
        for (int32_t c = 0; c < out->depth; ++c) {
          int32_t a = p->input1_offset + input1[broadcast_offset(&p->input1, b, y, x, c)];
          int32_t v = p->input2_offset + input2[broadcast_offset(&p->input2, b, y, x, c)];
          output[offset4(out, b, y, x, c)] =
              requantize(a * v, p->multiplier, p->shift, p->output_offset, p->activation_min, p->activation_max);
        }
      }
    }
  }
}
