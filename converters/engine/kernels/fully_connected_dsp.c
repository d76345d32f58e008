/* bisup int8 kernels: FULLY_CONNECTED with the Cortex-M DSP extension (M4, M7, M33).
 *
 * Covers every shape (any batches, depths, per-tensor or per-channel scales): two batch rows and two output
 * channels per pass through bisup_kernel_gemm_rows_dsp (conv_dsp.c: SXTB16 + SMLAD on four int8 at a time).
 * The input offset is folded into the bias at export (lowering.py), so the product needs no sums.
 */
#include "bisup_kernel_internal.h"

#if BISUP_KERNEL_DSP
int bisup_kernel_fully_connected_dsp(const bisup_kernel_fully_connected_params *p, const int8_t *input,
                                     int8_t *output) {
  const bisup_kernel_gemm g = {.weights = p->filter, .k = p->input_depth, .channels = p->output_depth,
                               .bias = p->bias, .multiplier = p->multiplier,
                               .shift = p->shift, .per_channel = p->per_channel, .output_offset = p->output_offset,
                               .activation_min = p->activation_min, .activation_max = p->activation_max,
                               .right_shifts = bisup_kernel_gemm_right_shifts(p->multiplier, p->shift,
                                                                              p->per_channel ? p->output_depth : 1)};
  const size_t in_step = (size_t)p->input_depth, out_step = (size_t)p->output_depth;
  int32_t b = 0;
  for (; b + 2 <= p->batches; b += 2) {
    bisup_kernel_gemm_rows_dsp(&g, input + b * in_step, input + (b + 1) * in_step, output + b * out_step,
                               output + (b + 1) * out_step);
  }
  if (b < p->batches) bisup_kernel_gemm_rows_dsp(&g, input + b * in_step, NULL, output + b * out_step, NULL);
  return 1;
}
#else
typedef int bisup_kernel_fully_connected_dsp_unused; /* ISO C forbids an empty translation unit */
#endif
