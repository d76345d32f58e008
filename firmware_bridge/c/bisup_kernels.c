/* bisup int8 kernels: see bisup_kernels.h. */
#include "bisup_kernels.h"

#include <stddef.h>


static int32_t clamp32(int32_t x, int32_t lo, int32_t hi) { return x < lo ? lo : (x > hi ? hi : x); }

int32_t bisup_kernel_saturating_rounding_doubling_high_mul(int32_t a, int32_t b) {
  if (a == b && a == INT32_MIN) return INT32_MAX; /* the one product that overflows */
  int64_t ab = (int64_t)a * (int64_t)b;
  int32_t nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
  return (int32_t)((ab + nudge) / ((int64_t)1 << 31)); /* C division truncates toward zero */
}

int32_t bisup_kernel_rounding_divide_by_pot(int32_t x, int exponent) {
  int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
  int32_t remainder = x & mask;
  int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0); /* round half away from zero */
}

int32_t bisup_kernel_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int shift) {
  int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
  int32_t scaled = (int32_t)((uint32_t)x << left); /* wraps as TFLM's int32 multiply does */
  return bisup_kernel_rounding_divide_by_pot(bisup_kernel_saturating_rounding_doubling_high_mul(scaled, multiplier),
                                             right);
}

static int32_t offset4(const bisup_kernel_shape *s, int32_t b, int32_t y, int32_t x, int32_t c) {
  return ((b * s->height + y) * s->width + x) * s->depth + c;
}

static int8_t requantize(int32_t acc, int32_t multiplier, int32_t shift, int32_t output_offset, int32_t lo,
                         int32_t hi) {
  acc = bisup_kernel_multiply_by_quantized_multiplier(acc, multiplier, (int)shift) + output_offset;
  return (int8_t)clamp32(acc, lo, hi);
}

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

void bisup_kernel_depthwise_conv2d(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output) {
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

void bisup_kernel_fully_connected(const bisup_kernel_fully_connected_params *p, const int8_t *input, int8_t *output) {
  for (int32_t b = 0; b < p->batches; ++b) {
    const int8_t *row = input + (size_t)b * p->input_depth;
    for (int32_t oc = 0; oc < p->output_depth; ++oc) {
      const int8_t *weights = p->filter + (size_t)oc * p->input_depth;
      int32_t acc = p->bias[oc], i = 0; /* the input offset is folded into the bias */
      for (; i + 4 <= p->input_depth; i += 4) {
        acc += weights[i] * row[i] + weights[i + 1] * row[i + 1] + weights[i + 2] * row[i + 2] +
               weights[i + 3] * row[i + 3];
      }
      for (; i < p->input_depth; ++i) acc += weights[i] * row[i];
      const int32_t k = p->per_channel ? oc : 0;
      output[(size_t)b * p->output_depth + oc] =
          requantize(acc, p->multiplier[k], p->shift[k], p->output_offset, p->activation_min, p->activation_max);
    }
  }
}

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

void bisup_kernel_concat(const bisup_kernel_concat_params *p, const int8_t *input, int8_t *output) {
  for (int32_t o = 0; o < p->outer; ++o) {
    const int8_t *from = input + (size_t)o * p->inner;
    int8_t *to = output + (size_t)o * p->output_inner + p->offset;
    for (int32_t i = 0; i < p->inner; ++i) to[i] = from[i];
  }
}

void bisup_kernel_requantize(const bisup_kernel_requantize_params *p, const int8_t *input, int8_t *output) {
  for (int32_t i = 0; i < p->count; ++i) {
    int32_t q = bisup_kernel_multiply_by_quantized_multiplier(input[i] - p->input_zero_point, p->multiplier,
                                                              (int)p->shift);
    output[i] = (int8_t)clamp32(q + p->output_zero_point, -128, 127);
  }
}

/* Index of a broadcast operand: a dimension of 1 stays at 0. */
static int32_t broadcast_offset(const bisup_kernel_shape *s, int32_t b, int32_t y, int32_t x, int32_t c) {
  return offset4(s, s->batches == 1 ? 0 : b, s->height == 1 ? 0 : y, s->width == 1 ? 0 : x, s->depth == 1 ? 0 : c);
}

void bisup_kernel_mul(const bisup_kernel_mul_params *p, const int8_t *input1, const int8_t *input2, int8_t *output) {
  const bisup_kernel_shape *out = &p->output;
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t y = 0; y < out->height; ++y) {
      for (int32_t x = 0; x < out->width; ++x) {
        for (int32_t c = 0; c < out->depth; ++c) {
          int32_t a = p->input1_offset + input1[broadcast_offset(&p->input1, b, y, x, c)];
          int32_t v = p->input2_offset + input2[broadcast_offset(&p->input2, b, y, x, c)];
          output[offset4(out, b, y, x, c)] =
              requantize(a * v, p->multiplier, p->shift, p->output_offset, p->activation_min, p->activation_max);
        }
      }
    }
  }
}

static int32_t scale_down(int32_t x, int32_t multiplier, int32_t shift) { /* shift <= 0 */
  return bisup_kernel_rounding_divide_by_pot(bisup_kernel_saturating_rounding_doubling_high_mul(x, multiplier),
                                             (int)-shift);
}

static void add_or_sub(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output,
                       int32_t sign) {
  const bisup_kernel_shape *out = &p->output;
  for (int32_t b = 0; b < out->batches; ++b) {
    for (int32_t y = 0; y < out->height; ++y) {
      for (int32_t x = 0; x < out->width; ++x) {
        for (int32_t c = 0; c < out->depth; ++c) {
          int32_t a = p->input1_offset + input1[broadcast_offset(&p->input1, b, y, x, c)];
          int32_t v = p->input2_offset + input2[broadcast_offset(&p->input2, b, y, x, c)];
          int32_t sa = scale_down((int32_t)((uint32_t)a << p->left_shift), p->input1_multiplier, p->input1_shift);
          int32_t sv = scale_down((int32_t)((uint32_t)v << p->left_shift), p->input2_multiplier, p->input2_shift);
          int32_t raw = scale_down(sa + sign * sv, p->output_multiplier, p->output_shift) + p->output_offset;
          output[offset4(out, b, y, x, c)] = (int8_t)clamp32(raw, p->activation_min, p->activation_max);
        }
      }
    }
  }
}

void bisup_kernel_add(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output) {
  add_or_sub(p, input1, input2, output, 1);
}

void bisup_kernel_sub(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output) {
  add_or_sub(p, input1, input2, output, -1);
}

void bisup_kernel_sum(const bisup_kernel_sum_params *p, const int8_t *input, int8_t *output) {
  const bisup_kernel_reduce_params *s = &p->shape;
  for (int32_t o = 0; o < s->outer; ++o) {
    for (int32_t i = 0; i < s->inner; ++i) {
      int32_t sum = 0;
      for (int32_t r = 0; r < s->reduced; ++r) sum += input[((size_t)o * s->reduced + r) * s->inner + i];
      sum -= p->input_zero_point * s->reduced;
      int32_t q = bisup_kernel_multiply_by_quantized_multiplier(sum, p->multiplier, (int)p->shift);
      q += p->output_zero_point;
      output[(size_t)o * s->inner + i] = (int8_t)clamp32(q, -128, 127);
    }
  }
}

/* --- softmax: gemmlowp fixed point, as TFLM's reference int8 softmax uses it ------------------- */

/* x * 2^exponent for exponent > 0, saturating (gemmlowp's SaturatingRoundingMultiplyByPOT). */
static int32_t saturating_shift_left(int32_t x, int exponent) {
  const int32_t threshold = (int32_t)(((int64_t)1 << (31 - exponent)) - 1);
  if (x > threshold) return INT32_MAX;
  if (x < -threshold) return INT32_MIN;
  return (int32_t)((uint32_t)x << exponent);
}

/* exp(a) for a in [-1/4, 0), a and the result in Q0.31. */
static int32_t exp_on_quarter_interval(int32_t a) {
  const int32_t constant_term = 1895147668; /* exp(-1/8) */
  const int32_t one_third = 715827883;
  const int32_t x = a + (1 << 28); /* Taylor expansion around -1/8 */
  const int32_t x2 = bisup_kernel_saturating_rounding_doubling_high_mul(x, x);
  const int32_t x3 = bisup_kernel_saturating_rounding_doubling_high_mul(x2, x);
  const int32_t x4 = bisup_kernel_saturating_rounding_doubling_high_mul(x2, x2);
  const int32_t x4_over_4 = bisup_kernel_rounding_divide_by_pot(x4, 2);
  const int32_t poly = bisup_kernel_rounding_divide_by_pot(
      bisup_kernel_saturating_rounding_doubling_high_mul(x4_over_4 + x3, one_third) + x2, 1);
  return constant_term + bisup_kernel_saturating_rounding_doubling_high_mul(constant_term, x + poly);
}

/* exp(a) for a <= 0 given with `integer_bits` integer bits (softmax: 5, logistic: 4); the result in
 * Q0.31: gemmlowp's exp_on_negative_values, a barrel shifter over the bits of -a above 1/4. */
static int32_t exp_on_negative_values(int32_t a, int integer_bits) {
  static const int32_t multipliers[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
  const int fraction_bits = 31 - integer_bits;
  const int32_t one_quarter = (int32_t)1 << (fraction_bits - 2);
  const int32_t a_mod_quarter_minus_quarter = (a & (one_quarter - 1)) - one_quarter;
  int32_t result = exp_on_quarter_interval(saturating_shift_left(a_mod_quarter_minus_quarter, integer_bits));
  const int32_t remainder = a_mod_quarter_minus_quarter - a;
  for (int k = 0; k < 7; ++k) { /* exp(-1/4), exp(-1/2), ..., exp(-16) for the bits of the remainder */
    const int exponent = k - 2;
    if (integer_bits > exponent && (remainder & ((int32_t)1 << (fraction_bits + exponent)))) {
      result = bisup_kernel_saturating_rounding_doubling_high_mul(result, multipliers[k]);
    }
  }
  if (integer_bits > 5 && a < -((int32_t)1 << (36 - integer_bits))) result = 0; /* below -32 */
  return a == 0 ? INT32_MAX : result;
}

static int32_t exp_on_negative_values_q5(int32_t a) { return exp_on_negative_values(a, 5); }

static int32_t rounding_half_sum(int32_t a, int32_t b) {
  int64_t sum = (int64_t)a + (int64_t)b;
  return (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
}

/* 1 / (1 + a) for a in [0, 1) in Q0.31, by Newton-Raphson in Q2.29 (gemmlowp's constants). */
static int32_t one_over_one_plus_x(int32_t a) {
  const int32_t half_denominator = rounding_half_sum(a, INT32_MAX);
  const int32_t one_q2 = 1 << 29;
  int32_t x = 1515870810 + bisup_kernel_saturating_rounding_doubling_high_mul(half_denominator, -1010580540);
  for (int i = 0; i < 3; ++i) {
    const int32_t product = bisup_kernel_saturating_rounding_doubling_high_mul(half_denominator, x);
    x = x + saturating_shift_left(bisup_kernel_saturating_rounding_doubling_high_mul(x, one_q2 - product), 2);
  }
  return saturating_shift_left(x, 1);
}

void bisup_kernel_logistic(const bisup_kernel_logistic_params *p, const int8_t *input, int8_t *output) {
  for (int32_t i = 0; i < p->count; ++i) {
    const int32_t x = input[i] - p->input_zero_point;
    if (x <= -p->input_range_radius) {
      output[i] = -128;
    } else if (x >= p->input_range_radius) {
      output[i] = 127;
    } else {
      const int32_t q4 = bisup_kernel_multiply_by_quantized_multiplier(x, p->input_multiplier,
                                                                       (int)p->input_left_shift);
      int32_t result = 1 << 30; /* logistic(0) = 1/2 */
      if (q4 != 0) {
        const int32_t magnitude = q4 > 0 ? q4 : -q4;
        const int32_t positive = one_over_one_plus_x(exp_on_negative_values(-magnitude, 4));
        result = q4 > 0 ? positive : INT32_MAX - positive;
      }
      output[i] = (int8_t)clamp32(bisup_kernel_rounding_divide_by_pot(result, 31 - 8) - 128, -128, 127);
    }
  }
}

static int count_leading_zeros(uint32_t x) {
  int n = 0;
  if (x == 0) return 32;
  while (!(x & 0x80000000u)) {
    x <<= 1;
    ++n;
  }
  return n;
}

static int32_t wrapping_add(int32_t a, int32_t b) { return (int32_t)((uint32_t)a + (uint32_t)b); }

/* The softmax family's shared steps (TFLM's softmax and log-softmax compute them alike): the row's
 * maximum, a difference to it in Q5.26, and the sum of exponentials in Q12.19. */
static int32_t row_max(const int8_t *in, int32_t depth) {
  int32_t max = -128;
  for (int32_t c = 0; c < depth; ++c) max = in[c] > max ? in[c] : max;
  return max;
}

static int32_t diff_q5(int32_t diff, int32_t multiplier, int32_t left_shift) {
  return bisup_kernel_multiply_by_quantized_multiplier(diff, multiplier, (int)left_shift); /* left_shift >= 0 */
}

static int32_t sum_of_exps_q12(const int8_t *in, int32_t depth, int32_t max, int32_t diff_min, int32_t multiplier,
                               int32_t left_shift) {
  int32_t sum = 0;
  for (int32_t c = 0; c < depth; ++c) {
    const int32_t diff = in[c] - max;
    if (diff < diff_min) continue;
    const int32_t e = exp_on_negative_values_q5(diff_q5(diff, multiplier, left_shift));
    sum = wrapping_add(sum, bisup_kernel_rounding_divide_by_pot(e, 12));
  }
  return sum;
}

void bisup_kernel_softmax(const bisup_kernel_softmax_params *p, const int8_t *input, int8_t *output) {
  for (int32_t row = 0; row < p->outer; ++row) {
    const int8_t *in = input + (size_t)row * p->depth;
    int8_t *out = output + (size_t)row * p->depth;
    const int32_t max = row_max(in, p->depth);
    const int32_t sum = sum_of_exps_q12(in, p->depth, max, p->diff_min, p->input_multiplier, p->input_left_shift);
    const int headroom_plus_one = count_leading_zeros((uint32_t)sum);
    const int bits_over_unit = 12 - headroom_plus_one;
    const int32_t shifted_sum_minus_one = (int32_t)(((uint32_t)sum << headroom_plus_one) - ((uint32_t)1 << 31));
    const int32_t reciprocal = one_over_one_plus_x(shifted_sum_minus_one);
    const int exponent = bits_over_unit + 31 - 8;
    for (int32_t c = 0; c < p->depth; ++c) {
      const int32_t diff = in[c] - max;
      if (diff < p->diff_min) {
        out[c] = -128;
        continue;
      }
      const int32_t e = exp_on_negative_values_q5(diff_q5(diff, p->input_multiplier, p->input_left_shift));
      const int32_t scaled = bisup_kernel_saturating_rounding_doubling_high_mul(reciprocal, e);
      const int32_t q = bisup_kernel_rounding_divide_by_pot(scaled, exponent);
      out[c] = (int8_t)clamp32(q - 128, -128, 127);
    }
  }
}

static int32_t saturating_add(int32_t a, int32_t b) {
  int64_t sum = (int64_t)a + b;
  return sum > INT32_MAX ? INT32_MAX : (sum < INT32_MIN ? INT32_MIN : (int32_t)sum);
}

static int32_t saturating_sub(int32_t a, int32_t b) {
  int64_t diff = (int64_t)a - b;
  return diff > INT32_MAX ? INT32_MAX : (diff < INT32_MIN ? INT32_MIN : (int32_t)diff);
}

static int32_t shift_left_or_keep(int32_t x, int exponent) { return exponent == 0 ? x : saturating_shift_left(x, exponent); }

/* log(x) for x >= 1 given in Q12.19; the result in Q5.26 (TFLM's log_x_for_x_greater_than_or_equal_to_1
 * with 5 output and 12 input integer bits: a rational approximation around sqrt(sqrt(2))). */
static int32_t log_q12_to_q5(int32_t z_a) {
  const int32_t log_2 = 1488522236, sqrt_sqrt_half = 1805811301, sqrt_half = 1518500250;
  const int32_t alpha_n = 117049297, alpha_d = 127690142, alpha_i = 1057819769, alpha_f = 638450708;
  const int input_bits = 12, accum_bits = 6;
  const int32_t shifted_quarter = bisup_kernel_rounding_divide_by_pot(536870912, accum_bits); /* 1/4 in Q6.25 */
  const int z_a_headroom_plus_1 = count_leading_zeros((uint32_t)z_a);
  const int32_t r_a_tmp = shift_left_or_keep(z_a, z_a_headroom_plus_1 - 1);
  const int32_t r_a = shift_left_or_keep(bisup_kernel_saturating_rounding_doubling_high_mul(r_a_tmp, sqrt_half), 1);
  const int32_t z_a_pow_2_adj =
      saturating_add(shift_left_or_keep(input_bits - z_a_headroom_plus_1, 31 - accum_bits), shifted_quarter);
  const int32_t z_b = bisup_kernel_saturating_rounding_doubling_high_mul(z_a, sqrt_half);
  const int z_b_headroom = count_leading_zeros((uint32_t)z_b) - 1;
  const int32_t r_b = shift_left_or_keep(z_a, z_b_headroom);
  const int32_t z_b_pow_2_adj =
      saturating_sub(shift_left_or_keep(input_bits - z_b_headroom, 31 - accum_bits), shifted_quarter);
  const int32_t r = r_a < r_b ? r_a : r_b;
  const int32_t z_pow_2_adj = z_a_pow_2_adj > z_b_pow_2_adj ? z_a_pow_2_adj : z_b_pow_2_adj;
  const int32_t p = rounding_half_sum(r, sqrt_sqrt_half);
  int32_t q = wrapping_add(r, -sqrt_sqrt_half);
  q = wrapping_add(q, q);
  const int32_t common_sq = bisup_kernel_saturating_rounding_doubling_high_mul(q, q);
  const int32_t q_common_sq = bisup_kernel_saturating_rounding_doubling_high_mul(q, common_sq);
  const int32_t num = wrapping_add(bisup_kernel_saturating_rounding_doubling_high_mul(q, r),
                                   bisup_kernel_saturating_rounding_doubling_high_mul(q_common_sq, alpha_n));
  const int32_t alpha_d_common_sq = bisup_kernel_saturating_rounding_doubling_high_mul(alpha_d, common_sq);
  const int32_t denom_minus_one = wrapping_add(
      bisup_kernel_saturating_rounding_doubling_high_mul(p, wrapping_add(wrapping_add(alpha_i, q), alpha_d_common_sq)),
      bisup_kernel_saturating_rounding_doubling_high_mul(alpha_f, q));
  const int32_t recip_denom = one_over_one_plus_x(denom_minus_one);
  const int32_t num_scaled = bisup_kernel_rounding_divide_by_pot(num, accum_bits);
  const int32_t result = wrapping_add(bisup_kernel_saturating_rounding_doubling_high_mul(z_pow_2_adj, log_2),
                                      bisup_kernel_saturating_rounding_doubling_high_mul(num_scaled, recip_denom));
  return saturating_shift_left(result, 1); /* Q6 to Q5 */
}

void bisup_kernel_log_softmax(const bisup_kernel_log_softmax_params *p, const int8_t *input, int8_t *output) {
  for (int32_t row = 0; row < p->outer; ++row) {
    const int8_t *in = input + (size_t)row * p->depth;
    int8_t *out = output + (size_t)row * p->depth;
    const int32_t max = row_max(in, p->depth);
    const int32_t log_sum = log_q12_to_q5(
        sum_of_exps_q12(in, p->depth, max, p->diff_min, p->input_multiplier, p->input_left_shift));
    const int32_t reversed = bisup_kernel_multiply_by_quantized_multiplier(wrapping_add(log_sum, INT32_MIN),
                                                                           p->reverse_scaling_divisor,
                                                                           (int)p->reverse_scaling_left_shift);
    const int32_t adjusted_diff_min = p->diff_min - 1 > reversed ? p->diff_min - 1 : reversed;
    for (int32_t c = 0; c < p->depth; ++c) {
      const int32_t diff = in[c] - max;
      if (diff <= adjusted_diff_min) {
        out[c] = -128;
        continue;
      }
      const int32_t q =
          bisup_kernel_rounding_divide_by_pot(diff_q5(diff, p->input_multiplier, p->input_left_shift) - log_sum,
                                              31 - 5 - 4) + 127;
      out[c] = (int8_t)clamp32(q, -128, 127);
    }
  }
}

static void reduce(const bisup_kernel_reduce_params *p, const int8_t *input, int8_t *output, int take_max) {
  for (int32_t o = 0; o < p->outer; ++o) {
    for (int32_t i = 0; i < p->inner; ++i) {
      int32_t best = take_max ? -128 : 127;
      for (int32_t r = 0; r < p->reduced; ++r) {
        int32_t v = input[((size_t)o * p->reduced + r) * p->inner + i];
        best = take_max ? (v > best ? v : best) : (v < best ? v : best);
      }
      output[(size_t)o * p->inner + i] = (int8_t)best;
    }
  }
}

void bisup_kernel_reduce_max(const bisup_kernel_reduce_params *p, const int8_t *input, int8_t *output) {
  reduce(p, input, output, 1);
}

void bisup_kernel_reduce_min(const bisup_kernel_reduce_params *p, const int8_t *input, int8_t *output) {
  reduce(p, input, output, 0);
}
