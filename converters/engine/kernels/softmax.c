/* bisup int8 kernels: SOFTMAX and LOG_SOFTMAX (see bisup_kernels.h). */
#include "bisup_kernel_internal.h"

/* exp(a) for a <= 0 in Q5.26, the result in Q0.31. */
static int32_t exp_on_negative_values_q5(int32_t a) { return bisup_kernel_exp_on_negative_values(a, 5); }

/* The softmax family's shared steps (TFLM's softmax and log-softmax compute them alike): the row's
 * maximum, a difference to it in Q5.26, and the sum of exponentials in Q12.19. */
static int32_t row_max(const int8_t *in, int32_t depth) {
  int32_t max = -128;
  for (int32_t c = 0; c < depth; ++c) max = in[c] > max ? in[c] : max;
  return max;
}

static int32_t diff_q5(int32_t diff, int32_t multiplier, int32_t left_shift) {
  return mbqm(diff, multiplier, (int)left_shift); /* left_shift >= 0 */
}

static int32_t sum_of_exps_q12(const int8_t *in, int32_t depth, int32_t max, int32_t diff_min, int32_t multiplier,
                               int32_t left_shift) {
  int32_t sum = 0;
  for (int32_t c = 0; c < depth; ++c) {
    const int32_t diff = in[c] - max;
    if (diff < diff_min) continue;
    const int32_t e = exp_on_negative_values_q5(diff_q5(diff, multiplier, left_shift));
    sum = wrapping_add(sum, rdbp(e, 12));
  }
  return sum;
}

void bisup_kernel_softmax(const bisup_kernel_softmax_params *p, const int8_t *input, int8_t *output) {
  for (int32_t row = 0; row < p->outer; ++row) {
    const int8_t *in = input + (size_t)row * p->depth;
    int8_t *out = output + (size_t)row * p->depth;
    const int32_t max = row_max(in, p->depth);
    const int32_t sum = sum_of_exps_q12(in, p->depth, max, p->diff_min, p->input_multiplier, p->input_left_shift);
    const int headroom_plus_one = bisup_kernel_count_leading_zeros((uint32_t)sum);
    const int bits_over_unit = 12 - headroom_plus_one;
    const int32_t shifted_sum_minus_one = (int32_t)(((uint32_t)sum << headroom_plus_one) - ((uint32_t)1 << 31));
    const int32_t reciprocal = bisup_kernel_one_over_one_plus_x(shifted_sum_minus_one);
    const int exponent = bits_over_unit + 31 - 8;
    for (int32_t c = 0; c < p->depth; ++c) {
      const int32_t diff = in[c] - max;
      if (diff < p->diff_min) {
        out[c] = -128;
        continue;
      }
      const int32_t e = exp_on_negative_values_q5(diff_q5(diff, p->input_multiplier, p->input_left_shift));
      const int32_t scaled = srdhm(reciprocal, e);
      const int32_t q = rdbp(scaled, exponent);
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

static int32_t shift_left_or_keep(int32_t x, int exponent) {
  return exponent == 0 ? x : bisup_kernel_saturating_shift_left(x, exponent);
}

/* log(x) for x >= 1 given in Q12.19; the result in Q5.26 (TFLM's log_x_for_x_greater_than_or_equal_to_1
 * with 5 output and 12 input integer bits: a rational approximation around sqrt(sqrt(2))). */
static int32_t log_q12_to_q5(int32_t z_a) {
  const int32_t log_2 = 1488522236, sqrt_sqrt_half = 1805811301, sqrt_half = 1518500250;
  const int32_t alpha_n = 117049297, alpha_d = 127690142, alpha_i = 1057819769, alpha_f = 638450708;
  const int input_bits = 12, accum_bits = 6;
  const int32_t shifted_quarter = rdbp(536870912, accum_bits); /* 1/4 in Q6.25 */
  const int z_a_headroom_plus_1 = bisup_kernel_count_leading_zeros((uint32_t)z_a);
  const int32_t r_a_tmp = shift_left_or_keep(z_a, z_a_headroom_plus_1 - 1);
  const int32_t r_a = shift_left_or_keep(srdhm(r_a_tmp, sqrt_half), 1);
  const int32_t z_a_pow_2_adj =
      saturating_add(shift_left_or_keep(input_bits - z_a_headroom_plus_1, 31 - accum_bits), shifted_quarter);
  const int32_t z_b = srdhm(z_a, sqrt_half);
  const int z_b_headroom = bisup_kernel_count_leading_zeros((uint32_t)z_b) - 1;
  const int32_t r_b = shift_left_or_keep(z_a, z_b_headroom);
  const int32_t z_b_pow_2_adj =
      saturating_sub(shift_left_or_keep(input_bits - z_b_headroom, 31 - accum_bits), shifted_quarter);
  const int32_t r = r_a < r_b ? r_a : r_b;
  const int32_t z_pow_2_adj = z_a_pow_2_adj > z_b_pow_2_adj ? z_a_pow_2_adj : z_b_pow_2_adj;
  const int32_t p = bisup_kernel_rounding_half_sum(r, sqrt_sqrt_half);
  int32_t q = wrapping_add(r, -sqrt_sqrt_half);
  q = wrapping_add(q, q);
  const int32_t common_sq = srdhm(q, q);
  const int32_t q_common_sq = srdhm(q, common_sq);
  const int32_t num = wrapping_add(srdhm(q, r),
                                   srdhm(q_common_sq, alpha_n));
  const int32_t alpha_d_common_sq = srdhm(alpha_d, common_sq);
  const int32_t denom_minus_one = wrapping_add(
      srdhm(p, wrapping_add(wrapping_add(alpha_i, q), alpha_d_common_sq)),
      srdhm(alpha_f, q));
  const int32_t recip_denom = bisup_kernel_one_over_one_plus_x(denom_minus_one);
  const int32_t num_scaled = rdbp(num, accum_bits);
  const int32_t result = wrapping_add(srdhm(z_pow_2_adj, log_2),
                                      srdhm(num_scaled, recip_denom));
  return bisup_kernel_saturating_shift_left(result, 1); /* Q6 to Q5 */
}

void bisup_kernel_log_softmax(const bisup_kernel_log_softmax_params *p, const int8_t *input, int8_t *output) {
  for (int32_t row = 0; row < p->outer; ++row) {
    const int8_t *in = input + (size_t)row * p->depth;
    int8_t *out = output + (size_t)row * p->depth;
    const int32_t max = row_max(in, p->depth);
    const int32_t log_sum = log_q12_to_q5(
        sum_of_exps_q12(in, p->depth, max, p->diff_min, p->input_multiplier, p->input_left_shift));
    const int32_t reversed = mbqm(wrapping_add(log_sum, INT32_MIN),
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
          rdbp(diff_q5(diff, p->input_multiplier, p->input_left_shift) - log_sum,
                                              31 - 5 - 4) + 127;
      out[c] = (int8_t)clamp32(q, -128, 127);
    }
  }
}
