/* bisup int8 kernels: LOGISTIC (see bisup_kernels.h). */
#include "bisup_kernel_internal.h"

void bisup_kernel_logistic(const bisup_kernel_logistic_params *p, const int8_t *input, int8_t *output) {
  for (int32_t i = 0; i < p->count; ++i) {
    const int32_t x = input[i] - p->input_zero_point;
    if (x <= -p->input_range_radius) {
      output[i] = -128;
    } else if (x >= p->input_range_radius) {
      output[i] = 127;
    } else {
      const int32_t q4 = mbqm(x, p->input_multiplier,
                                                                       (int)p->input_left_shift);
      int32_t result = 1 << 30; /* logistic(0) = 1/2 */
      if (q4 != 0) {
        const int32_t magnitude = q4 > 0 ? q4 : -q4;
        const int32_t positive = bisup_kernel_one_over_one_plus_x(bisup_kernel_exp_on_negative_values(-magnitude, 4));
        result = q4 > 0 ? positive : INT32_MAX - positive;
      }
      output[i] = (int8_t)clamp32(rdbp(result, 31 - 8) - 128, -128, 127);
    }
  }
}
