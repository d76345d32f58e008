/* bisup int8 kernels: PAD and PADV2 (see bisup_kernels.h). */
#include "bisup_kernel_internal.h"

void bisup_kernel_pad(const bisup_kernel_pad_params *p, const int8_t *input, int8_t *output) {
  const bisup_kernel_shape *in = &p->input, *out = &p->output;
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t y = 0; y < out->height; ++y) {
      for (int32_t x = 0; x < out->width; ++x) {
        for (int32_t c = 0; c < out->depth; ++c) {
          const int32_t ib = b - p->before_batches, iy = y - p->before_height, ix = x - p->before_width,
                        ic = c - p->before_depth;
          const int inside = ib >= 0 && ib < in->batches && iy >= 0 && iy < in->height && ix >= 0 &&
                             ix < in->width && ic >= 0 && ic < in->depth;
          output[offset4(out, b, y, x, c)] = inside ? input[offset4(in, ib, iy, ix, ic)] : p->value;
        }
      }
    }
  }
}
