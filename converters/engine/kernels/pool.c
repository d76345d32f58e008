/* bisup int8 kernels: MAX_POOL_2D and AVERAGE_POOL_2D (see bisup_kernels.h). */
#include "bisup_kernel_internal.h"

/* MAX_POOL_2D and AVERAGE_POOL_2D: the window is clipped to the input, as TFLM clips it. */
static void pool(const bisup_kernel_pool_params *p, const int8_t *input, int8_t *output, int average) {
  const bisup_kernel_shape *in = &p->input, *out = &p->output;
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t oy = 0; oy < out->height; ++oy) {
      for (int32_t ox = 0; ox < out->width; ++ox) {
        const int32_t y0 = oy * p->stride_height - p->pad_height, x0 = ox * p->stride_width - p->pad_width;
        const int32_t fy0 = y0 < 0 ? -y0 : 0, fx0 = x0 < 0 ? -x0 : 0;
        const int32_t fy1 = p->filter_height < in->height - y0 ? p->filter_height : in->height - y0;
        const int32_t fx1 = p->filter_width < in->width - x0 ? p->filter_width : in->width - x0;
        for (int32_t c = 0; c < out->depth; ++c) {
          int32_t value = -128, count = (fy1 - fy0) * (fx1 - fx0);
          if (average) {
            int32_t sum = 0;
            for (int32_t fy = fy0; fy < fy1; ++fy) {
              for (int32_t fx = fx0; fx < fx1; ++fx) sum += input[offset4(in, b, y0 + fy, x0 + fx, c)];
            }
            if (count <= 0) count = 1; /* TFLM refuses such a window at run time; the generator never plans one */
            value = sum > 0 ? (sum + count / 2) / count : (sum - count / 2) / count; /* half away from zero */
          } else {
            for (int32_t fy = fy0; fy < fy1; ++fy) {
              for (int32_t fx = fx0; fx < fx1; ++fx) {
                const int32_t v = input[offset4(in, b, y0 + fy, x0 + fx, c)];
                value = v > value ? v : value;
              }
            }
          }
          output[offset4(out, b, oy, ox, c)] = (int8_t)clamp32(value, p->activation_min, p->activation_max);
        }
      }
    }
  }
}

void bisup_kernel_max_pool(const bisup_kernel_pool_params *p, const int8_t *input, int8_t *output) {
  pool(p, input, output, 0);
}

void bisup_kernel_average_pool(const bisup_kernel_pool_params *p, const int8_t *input, int8_t *output) {
  pool(p, input, output, 1);
}
