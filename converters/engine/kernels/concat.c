/* bisup int8 kernels: CONCATENATION (see bisup_kernels.h). */
#include "bisup_kernel_internal.h"

void bisup_kernel_concat(const bisup_kernel_concat_params *p, const int8_t *input, int8_t *output) {
  for (int32_t o = 0; o < p->outer; ++o) {
    const int8_t *from = input + (size_t)o * p->inner;
    int8_t *to = output + (size_t)o * p->output_inner + p->offset;
    for (int32_t i = 0; i < p->inner; ++i) to[i] = from[i];
  }
}
