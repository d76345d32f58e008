/* bisup int8 kernels: the fixed-point primitives, and the gemmlowp functions of the softmax family and the
 * logistic (see bisup_kernels.h). */
#include "bisup_kernel_internal.h"

const char *bisup_kernel_isa(void) { return BISUP_KERNEL_MVE ? "mve" : (BISUP_KERNEL_DSP ? "dsp" : "portable"); }

int32_t bisup_kernel_saturating_rounding_doubling_high_mul(int32_t a, int32_t b) { return srdhm(a, b); }

int32_t bisup_kernel_rounding_divide_by_pot(int32_t x, int exponent) { return rdbp(x, exponent); }

int32_t bisup_kernel_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int shift) {
  return mbqm(x, multiplier, shift);
}

/* --- softmax: gemmlowp fixed point, as TFLM's reference int8 softmax uses it ------------------- */

/* x * 2^exponent for exponent > 0, saturating (gemmlowp's SaturatingRoundingMultiplyByPOT). */
int32_t bisup_kernel_saturating_shift_left(int32_t x, int exponent) {
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
  const int32_t x2 = srdhm(x, x);
  const int32_t x3 = srdhm(x2, x);
  const int32_t x4 = srdhm(x2, x2);
  const int32_t x4_over_4 = rdbp(x4, 2);
  const int32_t poly = rdbp(
      srdhm(x4_over_4 + x3, one_third) + x2, 1);
  return constant_term + srdhm(constant_term, x + poly);
}

/* exp(a) for a <= 0 given with `integer_bits` integer bits (softmax: 5, logistic: 4); the result in
 * Q0.31: gemmlowp's exp_on_negative_values, a barrel shifter over the bits of -a above 1/4. */
int32_t bisup_kernel_exp_on_negative_values(int32_t a, int integer_bits) {
  static const int32_t multipliers[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
  const int fraction_bits = 31 - integer_bits;
  const int32_t one_quarter = (int32_t)1 << (fraction_bits - 2);
  const int32_t a_mod_quarter_minus_quarter = (a & (one_quarter - 1)) - one_quarter;
  int32_t result =
      exp_on_quarter_interval(bisup_kernel_saturating_shift_left(a_mod_quarter_minus_quarter, integer_bits));
  const int32_t remainder = a_mod_quarter_minus_quarter - a;
  for (int k = 0; k < 7; ++k) { /* exp(-1/4), exp(-1/2), ..., exp(-16) for the bits of the remainder */
    const int exponent = k - 2;
    if (integer_bits > exponent && (remainder & ((int32_t)1 << (fraction_bits + exponent)))) {
      result = srdhm(result, multipliers[k]);
    }
  }
  if (integer_bits > 5 && a < -((int32_t)1 << (36 - integer_bits))) result = 0; /* below -32 */
  return a == 0 ? INT32_MAX : result;
}


int32_t bisup_kernel_rounding_half_sum(int32_t a, int32_t b) {
  int64_t sum = (int64_t)a + (int64_t)b;
  return (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
}

/* 1 / (1 + a) for a in [0, 1) in Q0.31, by Newton-Raphson in Q2.29 (gemmlowp's constants). */
int32_t bisup_kernel_one_over_one_plus_x(int32_t a) {
  const int32_t half_denominator = bisup_kernel_rounding_half_sum(a, INT32_MAX);
  const int32_t one_q2 = 1 << 29;
  int32_t x = 1515870810 + srdhm(half_denominator, -1010580540);
  for (int i = 0; i < 3; ++i) {
    const int32_t product = srdhm(half_denominator, x);
    x = x + bisup_kernel_saturating_shift_left(srdhm(x, one_q2 - product), 2);
  }
  return bisup_kernel_saturating_shift_left(x, 1);
}

int bisup_kernel_count_leading_zeros(uint32_t x) {
  int n = 0;
  if (x == 0) return 32;
  while (!(x & 0x80000000u)) {
    x <<= 1;
    ++n;
  }
  return n;
}


