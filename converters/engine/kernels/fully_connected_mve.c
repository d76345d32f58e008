/* bisup int8 kernels: FULLY_CONNECTED on Helium (MVE, the Cortex-M55).
 *
 * Covers every FULLY_CONNECTED (any depths, batches, per-tensor or per-channel quantization); never returns 0.
 * Per batch row, four output channels per pass: VMLADAVA sums 16 int8 products into an int32 per instruction
 * (the input vector loaded once for the four filter rows), the last partial vector zero-filled by a tail
 * predicate; acc = bias (input_offset x sum(filter row) folded in at export, see bisup_kernels.h) + sum(w * x),
 * the same integer as TFLM's; a partial last group repeats the last filter row and stores only its real lanes.
 * Requantization four channels at a time with bisup_kernel_requantize_mve, bit-exact with TFLM's. No scratch. */
#include "bisup_kernel_internal.h"

#if BISUP_KERNEL_MVE
int bisup_kernel_fully_connected_mve(const bisup_kernel_fully_connected_params *p, const int8_t *input,
                                     int8_t *output) {
  const int32_t k = p->input_depth, channels = p->output_depth, last = channels - 1;
  for (int32_t b = 0; b < p->batches; ++b) {
    const int8_t *row = input + (size_t)b * k;
    int8_t *result = output + (size_t)b * channels;
    for (int32_t oc = 0; oc < channels; oc += 4) {
      const int8_t *w0 = p->filter + (size_t)oc * k;
      const int8_t *w1 = p->filter + (size_t)(oc + 1 < last ? oc + 1 : last) * k;
      const int8_t *w2 = p->filter + (size_t)(oc + 2 < last ? oc + 2 : last) * k;
      const int8_t *w3 = p->filter + (size_t)(oc + 3 < last ? oc + 3 : last) * k;
      int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, i = 0;
      for (; i + 16 <= k; i += 16) {
        const int8x16_t x = vld1q_s8(row + i);
        s0 = vmladavaq_s8(s0, x, vld1q_s8(w0 + i));
        s1 = vmladavaq_s8(s1, x, vld1q_s8(w1 + i));
        s2 = vmladavaq_s8(s2, x, vld1q_s8(w2 + i));
        s3 = vmladavaq_s8(s3, x, vld1q_s8(w3 + i));
      }
      if (i < k) {
        const mve_pred16_t tail = vctp8q((uint32_t)(k - i));
        const int8x16_t x = vldrbq_z_s8(row + i, tail);
        s0 = vmladavaq_s8(s0, x, vldrbq_z_s8(w0 + i, tail));
        s1 = vmladavaq_s8(s1, x, vldrbq_z_s8(w1 + i, tail));
        s2 = vmladavaq_s8(s2, x, vldrbq_z_s8(w2 + i, tail));
        s3 = vmladavaq_s8(s3, x, vldrbq_z_s8(w3 + i, tail));
      }
      const mve_pred16_t lanes = vctp32q((uint32_t)(channels - oc));
      int32x4_t multiplier, shift;
      if (p->per_channel) {
        multiplier = vldrwq_z_s32(p->multiplier + oc, lanes);
        shift = vldrwq_z_s32(p->shift + oc, lanes);
      } else {
        multiplier = vdupq_n_s32(p->multiplier[0]);
        shift = vdupq_n_s32(p->shift[0]);
      }
      int32x4_t acc = vsetq_lane_s32(s3, vsetq_lane_s32(s2, vsetq_lane_s32(s1, vdupq_n_s32(s0), 1), 2), 3);
      if (p->bias) acc = vaddq_s32(acc, vldrwq_z_s32(p->bias + oc, lanes));
      acc = bisup_kernel_requantize_mve(acc, multiplier, shift, p->output_offset, p->activation_min,
                                        p->activation_max);
      vstrbq_p_s32(result + oc, acc, lanes);
    }
  }
  return 1;
}
#else
typedef int bisup_kernel_fully_connected_mve_unused; /* ISO C: a translation unit is not empty */
#endif
