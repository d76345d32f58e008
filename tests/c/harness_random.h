/* The C check programs' pseudo-random numbers: xorshift32, the same sequence on every core and compiler. */
#ifndef BISUP_HARNESS_RANDOM_H
#define BISUP_HARNESS_RANDOM_H

#include <stdint.h>

static inline uint32_t next_random(uint32_t *state) {
  uint32_t x = *state;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return *state = x;
}

#endif
