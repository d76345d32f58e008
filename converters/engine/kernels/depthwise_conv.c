/* bisup int8 kernels: DEPTHWISE_CONV_2D (see bisup_kernels.h). */
#include "bisup_kernel_internal.h"

void bisup_kernel_depthwise_conv2d(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output) {
#if BISUP_KERNEL_MVE
  if (bisup_kernel_depthwise_conv2d_mve(p, input, output)) return;
#endif
  const bisup_kernel_shape *in = &p->input, *out = &p->output;
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t oy = 0; oy < out->height; ++oy) {
      for (int32_t ox = 0; ox < out->width; ++ox) {
        const int32_t y0 = oy * p->stride_height - p->pad_height, x0 = ox * p->stride_width - p->pad_width;
        for (int32_t ic = 0; ic < in->depth; ++ic) {
          for (int32_t m = 0; m < p->depth_multiplier; ++m) {
            const int32_t oc = ic * p->depth_multiplier + m;
            int32_t acc = 0;
            for (int32_t fy = 0; fy < p->filter_height; ++fy) {
              const int32_t iy = y0 + p->dilation_height * fy;
              if (iy < 0 || iy >= in->height) continue;
              for (int32_t fx = 0; fx < p->filter_width; ++fx) {
                const int32_t ix = x0 + p->dilation_width * fx;
                if (ix < 0 || ix >= in->width) continue;
                int32_t tap = p->filter[(fy * p->filter_width + fx) * out->depth + oc];
                acc += tap * (input[offset4(in, b, iy, ix, ic)] + p->input_offset);
              }
            }
            if (p->bias) acc += p->bias[oc];
            output[offset4(out, b, oy, ox, oc)] = requantize(acc, p->multiplier[oc], p->shift[oc], p->output_offset,
                                                             p->activation_min, p->activation_max);
          }
        }
      }
    }
  }
}
