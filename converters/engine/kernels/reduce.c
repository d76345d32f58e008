/* bisup int8 kernels: SUM, MEAN, REDUCE_MAX and REDUCE_MIN (see bisup_kernels.h). */
#include "bisup_kernel_internal.h"

void bisup_kernel_sum(const bisup_kernel_sum_params *p, const int8_t *input, int8_t *output) {
  const bisup_kernel_reduce_params *s = &p->shape;
  for (int32_t o = 0; o < s->outer; ++o) {
    for (int32_t i = 0; i < s->inner; ++i) {
      int32_t sum = 0;
      for (int32_t r = 0; r < s->reduced; ++r) sum += input[((size_t)o * s->reduced + r) * s->inner + i];
      sum -= p->input_zero_point * s->reduced;
      int32_t q = mbqm(sum, p->multiplier, (int)p->shift);
      q += p->output_zero_point;
      output[(size_t)o * s->inner + i] = (int8_t)clamp32(q, -128, 127);
    }
  }
}

static void reduce(const bisup_kernel_reduce_params *p, const int8_t *input, int8_t *output, int take_max) {
  for (int32_t o = 0; o < p->outer; ++o) {
    for (int32_t i = 0; i < p->inner; ++i) {
      int32_t best = take_max ? -128 : 127;
      for (int32_t r = 0; r < p->reduced; ++r) {
        int32_t v = input[((size_t)o * p->reduced + r) * p->inner + i];
        best = take_max ? (v > best ? v : best) : (v < best ? v : best);
      }
      output[(size_t)o * p->inner + i] = (int8_t)best;
    }
  }
}

void bisup_kernel_reduce_max(const bisup_kernel_reduce_params *p, const int8_t *input, int8_t *output) {
  reduce(p, input, output, 1);
}

void bisup_kernel_reduce_min(const bisup_kernel_reduce_params *p, const int8_t *input, int8_t *output) {
  reduce(p, input, output, 0);
}
