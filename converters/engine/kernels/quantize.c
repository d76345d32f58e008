/* bisup int8 kernels: QUANTIZE (int8 to int8 requantization) (see bisup_kernels.h). */
#include "bisup_kernel_internal.h"

void bisup_kernel_requantize(const bisup_kernel_requantize_params *p, const int8_t *input, int8_t *output) {
  for (int32_t i = 0; i < p->count; ++i) {
    int32_t q = mbqm(input[i] - p->input_zero_point, p->multiplier,
                                                              (int)p->shift);
    output[i] = (int8_t)clamp32(q + p->output_zero_point, -128, 127);
  }
}
