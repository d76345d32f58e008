/* bisup int8 kernels: CONV_2D (see bisup_kernels.h). */
#include "bisup_kernel_internal.h"

/* The filter taps that fall inside the input along one axis: [*first, *end). */
static void valid_taps(int32_t origin, int32_t dilation, int32_t taps, int32_t size, int32_t *first, int32_t *end) {
  int32_t lo = origin < 0 ? (-origin + dilation - 1) / dilation : 0;
  int32_t hi = size - origin <= 0 ? 0 : (size - origin + dilation - 1) / dilation;
  *first = lo;
  *end = hi < taps ? hi : taps;
}

/* sum(w * (x + offset)) = sum(w * x) + offset * sum(w): the same integer, with one add per MAC fewer.
 * A window inside the input takes sum(w) precomputed; one clipped by padding sums the taps it uses. */
void bisup_kernel_conv2d(const bisup_kernel_conv_params *p, const int8_t *input, int8_t *output) {
#if BISUP_KERNEL_MVE
  if (bisup_kernel_conv2d_mve(p, input, output)) return;
#endif
  const bisup_kernel_shape *in = &p->input, *out = &p->output;
  const int32_t depth = in->depth, taps_per_row = p->filter_width * depth, pixel_step = p->dilation_width * depth;
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t oy = 0; oy < out->height; ++oy) {
      const int32_t y0 = oy * p->stride_height - p->pad_height;
      int32_t fy0, fy1;
      valid_taps(y0, p->dilation_height, p->filter_height, in->height, &fy0, &fy1);
      for (int32_t ox = 0; ox < out->width; ++ox) {
        const int32_t x0 = ox * p->stride_width - p->pad_width;
        int32_t fx0, fx1;
        valid_taps(x0, p->dilation_width, p->filter_width, in->width, &fx0, &fx1);
        const int inside = fy0 == 0 && fy1 == p->filter_height && fx0 == 0 && fx1 == p->filter_width;
        int8_t *result = output + offset4(out, b, oy, ox, 0);
        for (int32_t oc = 0; oc < out->depth; ++oc) {
          const int8_t *filter = p->filter + (size_t)oc * p->filter_height * taps_per_row;
          int32_t acc = 0, filter_sum = 0;
          for (int32_t fy = fy0; fy < fy1; ++fy) {
            const int8_t *row = input + offset4(in, b, y0 + p->dilation_height * fy, x0 + p->dilation_width * fx0, 0);
            const int8_t *row_taps = filter + fy * taps_per_row + fx0 * depth;
            for (int32_t fx = 0; fx < fx1 - fx0; ++fx) { /* indices, not pointers run past the end */
              const int8_t *pixel = row + fx * pixel_step, *taps = row_taps + fx * depth;
              if (inside) {
                for (int32_t ic = 0; ic < depth; ++ic) acc += taps[ic] * pixel[ic];
              } else {
                for (int32_t ic = 0; ic < depth; ++ic) {
                  acc += taps[ic] * pixel[ic];
                  filter_sum += taps[ic];
                }
              }
            }
          }
          acc += p->input_offset * (inside ? p->filter_sums[oc] : filter_sum);
          if (p->bias) acc += p->bias[oc];
          result[oc] =
              requantize(acc, p->multiplier[oc], p->shift[oc], p->output_offset, p->activation_min, p->activation_max);
        }
      }
    }
  }
}
