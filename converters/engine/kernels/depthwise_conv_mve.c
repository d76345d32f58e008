/* bisup int8 kernels: DEPTHWISE_CONV_2D on Helium (MVE, the Cortex-M55), channels across the lanes.
 *
 * Covers depth_multiplier 1 (any filter size, stride, dilation, padding, depth); returns 0 for a larger
 * multiplier, which the portable kernel then runs.
 *
 * Four channels per vector, as int32 lanes: for each tap of the window that falls inside the input (TFLM skips
 * the others), acc += (x + input_offset) * w, the input and filter bytes widened by the load (VLDRB.S32), so
 * every lane holds TFLM's own int32 sum; a partial last group of channels is predicated (no load or store past
 * the tensors). acc starts at the bias. Requantization four channels at a time with bisup_kernel_requantize_mve,
 * bit-exact with TFLM's. No scratch. */
#include "bisup_kernel_internal.h"

#if BISUP_KERNEL_MVE
/* The filter taps that fall inside the input along one axis: [*first, *end). */
static void inside_taps(int32_t origin, int32_t dilation, int32_t taps, int32_t size, int32_t *first, int32_t *end) {
  int32_t lo = origin < 0 ? (-origin + dilation - 1) / dilation : 0;
  int32_t hi = size - origin <= 0 ? 0 : (size - origin + dilation - 1) / dilation;
  *first = lo;
  *end = hi < taps ? hi : taps;
}

int bisup_kernel_depthwise_conv2d_mve(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output) {
  if (p->depth_multiplier != 1) return 0;
  const bisup_kernel_shape *in = &p->input, *out = &p->output;
  const int32_t depth = in->depth;
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t oy = 0; oy < out->height; ++oy) {
      const int32_t y0 = oy * p->stride_height - p->pad_height;
      int32_t fy0, fy1;
      inside_taps(y0, p->dilation_height, p->filter_height, in->height, &fy0, &fy1);
      for (int32_t ox = 0; ox < out->width; ++ox) {
        const int32_t x0 = ox * p->stride_width - p->pad_width;
        int32_t fx0, fx1;
        inside_taps(x0, p->dilation_width, p->filter_width, in->width, &fx0, &fx1);
        int8_t *result = output + offset4(out, b, oy, ox, 0);
        for (int32_t c = 0; c < depth; c += 4) {
          const mve_pred16_t lanes = vctp32q((uint32_t)(depth - c));
          int32x4_t acc = p->bias ? vldrwq_z_s32(p->bias + c, lanes) : vdupq_n_s32(0);
          for (int32_t fy = fy0; fy < fy1; ++fy) {
            const int8_t *pixel = input + offset4(in, b, y0 + p->dilation_height * fy, 0, c);
            const int8_t *taps = p->filter + (size_t)fy * p->filter_width * depth + c;
            for (int32_t fx = fx0; fx < fx1; ++fx) {
              const int32x4_t x = vldrbq_z_s32(pixel + (x0 + p->dilation_width * fx) * depth, lanes);
              const int32x4_t w = vldrbq_z_s32(taps + fx * depth, lanes);
              acc = vaddq_s32(acc, vmulq_s32(vaddq_n_s32(x, p->input_offset), w));
            }
          }
          acc = bisup_kernel_requantize_mve(acc, vldrwq_z_s32(p->multiplier + c, lanes),
                                            vldrwq_z_s32(p->shift + c, lanes), p->output_offset, p->activation_min,
                                            p->activation_max);
          vstrbq_p_s32(result + c, acc, lanes);
        }
      }
    }
  }
  return 1;
}
#else
typedef int bisup_kernel_depthwise_conv_mve_unused; /* ISO C: a translation unit is not empty */
#endif
