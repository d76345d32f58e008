/*
 * bisup int8 kernels: MAX_POOL_2D and AVERAGE_POOL_2D (see bisup_kernels.h).
 *
 * The window is clipped to the input, as TFLM clips it. Any shape, one path per op, with no per-element index
 * arithmetic: MAX_POOL_2D runs each output pixel's window pixel by pixel over contiguous channels (the running
 * maximum kept in the output row, an int8 like every candidate); AVERAGE_POOL_2D sums each channel down its window
 * with a pointer stepping by the depth (global average pooling: one window, the whole map), then divides as TFLM
 * does (rounding half away from zero).
 */
#include "bisup_kernel_internal.h"

typedef struct {
  const int8_t *first; /* the window's top-left input pixel, channel 0 */
  int32_t rows, cols;  /* the window clipped to the input */
} window;

static window clip(const bisup_kernel_pool_params *p, const int8_t *input, int32_t b, int32_t oy, int32_t ox) {
  const bisup_kernel_shape *in = &p->input;
  const int32_t y0 = oy * p->stride_height - p->pad_height, x0 = ox * p->stride_width - p->pad_width;
  const int32_t fy0 = y0 < 0 ? -y0 : 0, fx0 = x0 < 0 ? -x0 : 0;
  const int32_t fy1 = p->filter_height < in->height - y0 ? p->filter_height : in->height - y0;
  const int32_t fx1 = p->filter_width < in->width - x0 ? p->filter_width : in->width - x0;
  window w = {input, fy1 - fy0, fx1 - fx0};
  if (w.rows > 0 && w.cols > 0) w.first = input + offset4(in, b, y0 + fy0, x0 + fx0, 0);
  return w;
}

void bisup_kernel_max_pool(const bisup_kernel_pool_params *p, const int8_t *input, int8_t *output) {
  const bisup_kernel_shape *in = &p->input, *out = &p->output;
  const int32_t depth = out->depth, row = in->width * in->depth;
  const int8_t lo = (int8_t)clamp32(-128, p->activation_min, p->activation_max);
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t oy = 0; oy < out->height; ++oy) {
      for (int32_t ox = 0; ox < out->width; ++ox) {
        const window w = clip(p, input, b, oy, ox);
        int8_t *o = output + offset4(out, b, oy, ox, 0);
        for (int32_t c = 0; c < depth; ++c) o[c] = -128;
        for (int32_t fy = 0; fy < w.rows; ++fy) {
          const int8_t *v = w.first + fy * row;
          for (int32_t fx = 0; fx < w.cols; ++fx, v += depth) {
            for (int32_t c = 0; c < depth; ++c) o[c] = v[c] > o[c] ? v[c] : o[c];
          }
        }
        if (lo == -128 && p->activation_max >= 127) continue;
        for (int32_t c = 0; c < depth; ++c) o[c] = (int8_t)clamp32(o[c], p->activation_min, p->activation_max);
      }
    }
  }
}

void bisup_kernel_average_pool(const bisup_kernel_pool_params *p, const int8_t *input, int8_t *output) {
  const bisup_kernel_shape *in = &p->input, *out = &p->output;
  const int32_t depth = out->depth, row = in->width * in->depth;
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t oy = 0; oy < out->height; ++oy) {
      for (int32_t ox = 0; ox < out->width; ++ox) {
        const window w = clip(p, input, b, oy, ox);
        int8_t *o = output + offset4(out, b, oy, ox, 0);
        int32_t count = w.rows * w.cols;
        if (count <= 0) count = 1; /* TFLM refuses such a window at run time; the generator never plans one */
        for (int32_t c = 0; c < depth; ++c) {
          int32_t sum = 0;
          for (int32_t fy = 0; fy < w.rows; ++fy) {
            const int8_t *v = w.first + fy * row + c;
            for (int32_t fx = 0; fx < w.cols; ++fx, v += depth) sum += *v;
          }
          const int32_t value = sum > 0 ? (sum + count / 2) / count : (sum - count / 2) / count; /* half away */
          o[c] = (int8_t)clamp32(value, p->activation_min, p->activation_max);
        }
      }
    }
  }
}
