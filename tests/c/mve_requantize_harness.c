/*
 * The Helium requantization (bisup_kernel_requantize_mve, four lanes) against the scalar one every portable
 * kernel uses (requantize(): TFLM's MultiplyByQuantizedMultiplier, double rounding), on the emulated
 * Cortex-M55, for every shift in [-31, 30] and accumulators and multipliers at the corners (INT32_MIN and
 * INT32_MAX, every power of two and its neighbours, halves that round either way) and pseudo-random ones.
 * tests/test_kernels_mve.py builds it with the board's shared part and reads its one answer:
 *   "MVEQ", then little-endian words: cases checked, cases that differ, and the first that differs
 *   (accumulator, multiplier, shift, scalar result, Helium result), zeros when none does.
 */
#include <stdint.h>

#include "bisup_kernel_internal.h"
#include "board.h"
#include "harness_random.h"

#if !BISUP_KERNEL_MVE
#error "this check is for a build with the Helium kernels (-mcpu=cortex-m55, not BISUP_KERNELS_PORTABLE)"
#endif

#define EDGES 190
static int32_t edges[EDGES];
static uint32_t checked, differ, first[5];

static int make_edges(void) {
  int n = 0;
  edges[n++] = INT32_MIN;
  edges[n++] = INT32_MAX;
  edges[n++] = 0;
  for (int j = 0; j < 31; ++j) { /* +-2^j, +-(2^j + 1), +-(2^j - 1) on the int32 range, and 3 x 2^j's halves */
    const int64_t v = (int64_t)1 << j;
    const int64_t candidates[6] = {v, -v, v + 1, -v - 1, 3 * v - 1, -3 * v + 1};
    for (int c = 0; c < 6; ++c) {
      if (candidates[c] >= INT32_MIN && candidates[c] <= INT32_MAX) edges[n++] = (int32_t)candidates[c];
    }
  }
  return n;
}

/* Four accumulators against one multiplier and shift, in both implementations. */
static void check(const int32_t acc[4], int32_t multiplier, int32_t shift, int32_t offset, int32_t lo, int32_t hi) {
  int32_t got[4];
  vst1q_s32(got, bisup_kernel_requantize_mve(vld1q_s32(acc), vdupq_n_s32(multiplier), vdupq_n_s32(shift), offset, lo,
                                             hi));
  for (int i = 0; i < 4; ++i) {
    /* The scalar path without its int8 cast, so that every bit of the Helium result is compared. */
    const int32_t want = clamp32(mbqm(acc[i], multiplier, (int)shift) + offset, lo, hi);
    ++checked;
    if (got[i] != want && differ++ == 0) {
      first[0] = (uint32_t)acc[i];
      first[1] = (uint32_t)multiplier;
      first[2] = (uint32_t)shift;
      first[3] = (uint32_t)want;
      first[4] = (uint32_t)got[i];
    }
  }
}

int main(void) {
  bisup_board_init();
  const int n = make_edges();
  uint32_t state = 2463534242u;
  /* Wide clamps and no offset: the multiply and both roundings are seen whole. Then int8 ones. */
  for (int32_t shift = -31; shift <= 30; ++shift) {
    for (int m = 0; m < n; ++m) {
      for (int a = 0; a < n; a += 4) {
        const int32_t acc[4] = {edges[a], edges[(a + 1) % n], edges[(a + 2) % n], edges[(a + 3) % n]};
        check(acc, edges[m], shift, 0, INT32_MIN, INT32_MAX);
      }
    }
    for (int r = 0; r < 4000; ++r) {
      const int32_t acc[4] = {(int32_t)next_random(&state), (int32_t)next_random(&state) >> (r & 31),
                              (int32_t)next_random(&state) >> 8, (int32_t)(next_random(&state) >> 16) - 32768};
      const int32_t multiplier = r & 1 ? (int32_t)next_random(&state) : (int32_t)(next_random(&state) >> 1 | 1u << 30);
      check(acc, multiplier, shift, 0, INT32_MIN, INT32_MAX);
      check(acc, multiplier, shift, (int32_t)(next_random(&state) % 256) - 128, -128, 127);
    }
  }
  const uint32_t words[7] = {checked, differ, first[0], first[1], first[2], first[3], first[4]};
  bisup_board_write((const uint8_t *)"MVEQ", 4);
  bisup_board_write((const uint8_t *)words, sizeof words);
  for (;;) {
  }
}
