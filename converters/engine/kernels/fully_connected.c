/* bisup int8 kernels: FULLY_CONNECTED (see bisup_kernels.h). */
#include "bisup_kernel_internal.h"

void bisup_kernel_fully_connected(const bisup_kernel_fully_connected_params *p, const int8_t *input, int8_t *output) {
#if BISUP_KERNEL_MVE
  if (bisup_kernel_fully_connected_mve(p, input, output)) return;
#endif
  for (int32_t b = 0; b < p->batches; ++b) {
    const int8_t *row = input + (size_t)b * p->input_depth;
    for (int32_t oc = 0; oc < p->output_depth; ++oc) {
      const int8_t *weights = p->filter + (size_t)oc * p->input_depth;
      int32_t acc = p->bias[oc], i = 0; /* the input offset is folded into the bias */
      for (; i + 4 <= p->input_depth; i += 4) {
        acc += weights[i] * row[i] + weights[i + 1] * row[i + 1] + weights[i + 2] * row[i + 2] +
               weights[i + 3] * row[i + 3];
      }
      for (; i < p->input_depth; ++i) acc += weights[i] * row[i];
      const int32_t k = p->per_channel ? oc : 0;
      output[(size_t)b * p->output_depth + oc] =
          requantize(acc, p->multiplier[k], p->shift[k], p->output_offset, p->activation_min, p->activation_max);
    }
  }
}
