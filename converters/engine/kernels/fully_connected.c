/* bisup int8 kernels: FULLY_CONNECTED (see bisup_kernels.h).
 *
 * The Helium variant first (fully_connected_mve.c on the Cortex-M55); otherwise the matrix product CONV_2D
 * also uses, two batch rows x two output channels per pass, any shape: its DSP rows on the M4/M7/M33
 * (bisup_kernel_gemm_rows_dsp, conv_dsp.c: SXTB16 + SMLAD on four int8 at a time), portable C elsewhere
 * (bisup_kernel_gemm_rows, conv.c). The input offset is folded into the bias at export (bias + input_offset x
 * sum(w): TFLM's sum as the same integer).
 */
#include "bisup_kernel_internal.h"

void bisup_kernel_fully_connected(const bisup_kernel_fully_connected_params *p, const int8_t *input, int8_t *output) {
#if BISUP_KERNEL_MVE
  if (bisup_kernel_fully_connected_mve(p, input, output)) return;
#endif
#if BISUP_KERNEL_DSP
  bisup_kernel_gemm_rows_fn *const rows = bisup_kernel_gemm_rows_dsp;
#else
  bisup_kernel_gemm_rows_fn *const rows = bisup_kernel_gemm_rows;
#endif
  const bisup_kernel_gemm g = {.weights = p->filter, .k = p->input_depth, .channels = p->output_depth,
                               .bias = p->bias, .multiplier = p->multiplier,
                               .shift = p->shift, .per_channel = p->per_channel, .output_offset = p->output_offset,
                               .activation_min = p->activation_min, .activation_max = p->activation_max,
                               .right_shifts = bisup_kernel_gemm_right_shifts(p->multiplier, p->shift,
                                                                              p->per_channel ? p->output_depth : 1)};
  const size_t in_step = (size_t)p->input_depth, out_step = (size_t)p->output_depth;
  int32_t b = 0;
  for (; b + 2 <= p->batches; b += 2) {
    rows(&g, input + b * in_step, input + (b + 1) * in_step, output + b * out_step, output + (b + 1) * out_step);
  }
  if (b < p->batches) rows(&g, input + b * in_step, NULL, output + b * out_step, NULL);
}
