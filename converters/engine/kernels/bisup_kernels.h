/*
 * bisup int8 kernels: the integer arithmetic of TFLite Micro's reference kernels, re-implemented in
 * C99 from its specification, for the models `bisup export` generates as plain C (model_infer.c).
 *
 * Every requantization parameter (multiplier, shift, per channel) is computed at export time by
 * converters/engine/lowering.py exactly as TFLM computes it, so these kernels only do integer work and give
 * the same bytes as the tflite-micro interpreter. Rounding follows TFLM's default build (double
 * rounding: saturating rounding doubling high multiply, then rounding divide by a power of two).
 * Right shifts of negative values are arithmetic, as on GCC and Clang for every target bisup uses.
 *
 * No heap, no stdio, no floating point: tensors live where the generated code's static arena says.
 *
 * Names: every function and type here starts with bisup_kernel_.
 * Every public C name of bisup starts with bisup_<module>_ or BISUP_<MODULE>_ (README, "Firmware templates").
 */
#ifndef BISUP_KERNELS_H_
#define BISUP_KERNELS_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The instruction set these kernels were compiled for: "mve", "dsp" or "portable" (see bisup_kernel_internal.h). */
const char *bisup_kernel_isa(void);

/* Fixed-point primitives (exposed for the tests). */
int32_t bisup_kernel_saturating_rounding_doubling_high_mul(int32_t a, int32_t b);
int32_t bisup_kernel_rounding_divide_by_pot(int32_t x, int exponent);
int32_t bisup_kernel_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int shift);

/* 4-D shapes are NHWC. */
typedef struct {
  int32_t batches, height, width, depth;
} bisup_kernel_shape;

typedef struct {
  bisup_kernel_shape input, output;
  int32_t filter_height, filter_width; /* filter: [output depth][filter_height][filter_width][input depth] */
  int32_t stride_height, stride_width, dilation_height, dilation_width, pad_height, pad_width;
  int32_t input_offset, output_offset, activation_min, activation_max;
  const int8_t *filter; /* followed by 3 bytes the DSP kernel may read (the generated code gives them) */
  const int32_t *bias; /* may be NULL */
  const int32_t *multiplier, *shift; /* one per output channel */
  const int32_t *filter_sums; /* per output channel: windows inside the input add input_offset x this */
  /* per output channel, bias + input_offset x filter_sums (modulo 2^32, as int32 sums wrap): the paths
   * that give padding taps the input zero point (x + input_offset = 0) add only this to sum(w * x) */
  const int32_t *folded_bias;
} bisup_kernel_conv_params;

typedef struct {
  bisup_kernel_shape input, output; /* output depth = input depth x depth_multiplier */
  int32_t filter_height, filter_width, depth_multiplier;
  int32_t stride_height, stride_width, dilation_height, dilation_width, pad_height, pad_width;
  int32_t input_offset, output_offset, activation_min, activation_max;
  const int8_t *filter; /* [1][filter_height][filter_width][output depth] */
  const int32_t *bias;
  const int32_t *multiplier, *shift;
  /* Per output channel, bias + input_offset x the sum of the channel's taps (wrapped to int32): the accumulator's
   * start for a window wholly inside the input. May be NULL (then every pixel takes the general path). */
  const int32_t *interior_bias;
  /* A 3 x 3 filter, depth multiplier 1, for the DSP kernel: per group of 4 channels 4g..4g+3, 36 words: twice
   * their interior_bias (4); per filter row, the doubled filter's (w0, w1) of each channel (4), then its (w2, w1)
   * (4), as int16 pairs, low half first (24); (multiplier, -shift - 1) of each channel (8). NULL elsewhere: the generated code gives
   * BISUP_KERNEL_DW_PAIRS(its array), which is NULL where no kernel reads it. */
  const int32_t *filter_pairs;
} bisup_kernel_depthwise_params;

/* Where the DSP depthwise kernel runs, the generated code defines and points at filter_pairs; elsewhere neither. */
#if !defined(BISUP_KERNELS_PORTABLE) && defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP /* = BISUP_KERNEL_DSP */
#define BISUP_KERNEL_DW_PAIRS_USED 1
#define BISUP_KERNEL_DW_PAIRS(name) (name)
#else
#define BISUP_KERNEL_DW_PAIRS_USED 0
#define BISUP_KERNEL_DW_PAIRS(name) NULL
#endif

typedef struct {
  int32_t batches, input_depth, output_depth;
  int32_t output_offset, activation_min, activation_max;
  const int8_t *filter; /* [output_depth][input_depth] */
  const int32_t *bias;  /* with input_offset x sum(filter row) folded in at export: exact integer algebra */
  const int32_t *multiplier, *shift; /* per channel, or one entry when per_channel is 0 */
  int32_t per_channel;
} bisup_kernel_fully_connected_params;

typedef struct {
  bisup_kernel_shape input, output;
  int32_t filter_height, filter_width, stride_height, stride_width, pad_height, pad_width;
  int32_t activation_min, activation_max;
} bisup_kernel_pool_params;

/* PAD: input placed at (before_*) inside the output, every other element = value. */
typedef struct {
  bisup_kernel_shape input, output;
  int32_t before_batches, before_height, before_width, before_depth;
  int8_t value;
} bisup_kernel_pad_params;

/* One input's share of a CONCATENATION: `outer` slices of `inner` bytes, placed at `offset` within each
 * output slice of `output_inner` bytes (TFLM's int8 concatenation needs equal quantization: a copy). */
typedef struct {
  int32_t outer, inner, output_inner, offset;
} bisup_kernel_concat_params;

typedef struct {
  int32_t count, input_zero_point, output_zero_point, multiplier, shift;
} bisup_kernel_requantize_params;

/* Elementwise binary ops over shapes broadcast to 4-D (a dimension of 1 repeats). */
typedef struct {
  bisup_kernel_shape input1, input2, output;
  int32_t input1_offset, input2_offset, output_offset, activation_min, activation_max;
  int32_t multiplier, shift;
} bisup_kernel_mul_params;

/* ADD and SUB: both inputs rescaled to a common scale with 20 bits of headroom, then requantized. */
typedef struct {
  bisup_kernel_shape input1, input2, output;
  int32_t input1_offset, input2_offset, output_offset, activation_min, activation_max;
  int32_t left_shift, input1_multiplier, input1_shift, input2_multiplier, input2_shift;
  int32_t output_multiplier, output_shift; /* shifts <= 0 */
} bisup_kernel_add_params;

typedef struct {
  int32_t outer, depth; /* rows of `depth` logits */
  int32_t input_multiplier, input_left_shift, diff_min;
} bisup_kernel_softmax_params;

typedef struct {
  int32_t outer, depth;
  int32_t input_multiplier, input_left_shift, reverse_scaling_divisor, reverse_scaling_left_shift, diff_min;
} bisup_kernel_log_softmax_params; /* output: zero point 127, scale 16/256 */

typedef struct {
  int32_t count, input_zero_point, input_range_radius, input_multiplier, input_left_shift;
} bisup_kernel_logistic_params; /* output: zero point -128, scale 1/256 */

/* A reduction over the middle of [outer][reduced][inner], the layout every contiguous axis set has. */
typedef struct {
  int32_t outer, reduced, inner;
} bisup_kernel_reduce_params;

typedef struct {
  bisup_kernel_reduce_params shape;
  int32_t input_zero_point, output_zero_point, multiplier, shift;
} bisup_kernel_sum_params;

void bisup_kernel_conv2d(const bisup_kernel_conv_params *p, const int8_t *input, int8_t *output);
void bisup_kernel_depthwise_conv2d(const bisup_kernel_depthwise_params *p, const int8_t *input, int8_t *output);
void bisup_kernel_fully_connected(const bisup_kernel_fully_connected_params *p, const int8_t *input, int8_t *output);
void bisup_kernel_max_pool(const bisup_kernel_pool_params *p, const int8_t *input, int8_t *output);
void bisup_kernel_average_pool(const bisup_kernel_pool_params *p, const int8_t *input, int8_t *output);
void bisup_kernel_pad(const bisup_kernel_pad_params *p, const int8_t *input, int8_t *output);
void bisup_kernel_concat(const bisup_kernel_concat_params *p, const int8_t *input, int8_t *output);
void bisup_kernel_requantize(const bisup_kernel_requantize_params *p, const int8_t *input, int8_t *output);
void bisup_kernel_mul(const bisup_kernel_mul_params *p, const int8_t *input1, const int8_t *input2, int8_t *output);
void bisup_kernel_add(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output);
void bisup_kernel_sub(const bisup_kernel_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output);
void bisup_kernel_softmax(const bisup_kernel_softmax_params *p, const int8_t *input, int8_t *output);
void bisup_kernel_log_softmax(const bisup_kernel_log_softmax_params *p, const int8_t *input, int8_t *output);
void bisup_kernel_logistic(const bisup_kernel_logistic_params *p, const int8_t *input, int8_t *output);
/* SUM, and MEAN too: its multiplier divides by the element count. */
void bisup_kernel_sum(const bisup_kernel_sum_params *p, const int8_t *input, int8_t *output);
void bisup_kernel_reduce_max(const bisup_kernel_reduce_params *p, const int8_t *input, int8_t *output);
void bisup_kernel_reduce_min(const bisup_kernel_reduce_params *p, const int8_t *input, int8_t *output);
/* RESHAPE moves no data: the generated code gives input and output one place in the arena. */

#ifdef __cplusplus
}
#endif

#endif /* BISUP_KERNELS_H_ */
