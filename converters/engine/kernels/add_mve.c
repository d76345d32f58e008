/* bisup int8 kernels: ADD and SUB on Helium (MVE, the Cortex-M55).
 *
 * Covers inputs and output of one shape (no broadcast: a residual connection); returns 0 for a broadcast, which
 * the portable kernel then runs. Four elements per vector as int32 lanes (the bytes widened by the load), TFLM's
 * integer steps in order: x + input_offset, times 2^left_shift, each input scaled by its multiplier and shift
 * (MultiplyByQuantizedMultiplierSmallerThanOneExp: bisup_kernel_mbqm_mve with no left shift of its own), the
 * two added (or subtracted), scaled by the output multiplier and shift, the output offset added and clamped: each
 * step bit-exact with the portable kernel's (bisup_kernel_internal.h). The last partial vector is predicated
 * (no load or store past the tensors). No scratch. */
#include "bisup_kernel_internal.h"

#if BISUP_KERNEL_MVE
static int same_shape(const bisup_kernel_shape *a, const bisup_kernel_shape *b) {
  return a->batches == b->batches && a->height == b->height && a->width == b->width && a->depth == b->depth;
}

/* Four elements: the loads (predicated unless `full`), the arithmetic and the narrowing store. */
BISUP_KERNEL_SPECIALISED void add4(const int8_t *input1, const int8_t *input2, int8_t *output, mve_pred16_t lanes,
                                   int full, int32_t offset1, int32_t offset2, int32x4_t left, int32x4_t m1,
                                   int32x4_t r1, int32x4_t m2, int32x4_t r2, int32x4_t mo, int32x4_t ro,
                                   int32_t output_offset, int32_t lo, int32_t hi, int32_t sign) {
  const int32x4_t zero = vdupq_n_s32(0);
  const int32x4_t a = vaddq_n_s32(full ? vldrbq_s32(input1) : vldrbq_z_s32(input1, lanes), offset1);
  const int32x4_t v = vaddq_n_s32(full ? vldrbq_s32(input2) : vldrbq_z_s32(input2, lanes), offset2);
  const int32x4_t sa = bisup_kernel_mbqm_mve(a, m1, left, r1), sv = bisup_kernel_mbqm_mve(v, m2, left, r2);
  const int32x4_t raw = sign > 0 ? vaddq_s32(sa, sv) : vsubq_s32(sa, sv);
  const int32x4_t out = bisup_kernel_requantize_split_mve(raw, mo, zero, ro, output_offset, lo, hi);
  if (full) {
    vstrbq_s32(output, out);
  } else {
    vstrbq_p_s32(output, out, lanes);
  }
}

int bisup_kernel_add_mve(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output,
                         int32_t sign) {
  if (!same_shape(&p->input1, &p->output) || !same_shape(&p->input2, &p->output)) return 0;
  const bisup_kernel_shape *out = &p->output;
  const int32_t count = out->batches * out->height * out->width * out->depth;
  const int32_t offset1 = p->input1_offset, offset2 = p->input2_offset, output_offset = p->output_offset;
  const int32_t lo = p->activation_min, hi = p->activation_max;
  const int32x4_t left = vdupq_n_s32(p->left_shift);
  const int32x4_t m1 = vdupq_n_s32(p->input1_multiplier), r1 = vdupq_n_s32(p->input1_shift);
  const int32x4_t m2 = vdupq_n_s32(p->input2_multiplier), r2 = vdupq_n_s32(p->input2_shift);
  const int32x4_t mo = vdupq_n_s32(p->output_multiplier), ro = vdupq_n_s32(p->output_shift);
  int32_t i = 0;
  if (sign > 0) {
    for (; i + 4 <= count; i += 4) {
      add4(input1 + i, input2 + i, output + i, 0xffff, 1, offset1, offset2, left, m1, r1, m2, r2, mo, ro,
           output_offset, lo, hi, 1);
    }
  } else {
    for (; i + 4 <= count; i += 4) {
      add4(input1 + i, input2 + i, output + i, 0xffff, 1, offset1, offset2, left, m1, r1, m2, r2, mo, ro,
           output_offset, lo, hi, -1);
    }
  }
  if (i < count) {
    add4(input1 + i, input2 + i, output + i, vctp32q((uint32_t)(count - i)), 0, offset1, offset2, left, m1, r1, m2,
         r2, mo, ro, output_offset, lo, hi, sign);
  }
  return 1;
}
#else
typedef int bisup_kernel_add_mve_unused; /* ISO C: a translation unit is not empty */
#endif
