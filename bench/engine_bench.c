/* Times bisup_model_infer on the host: one input from stdin, N inferences, nanoseconds per inference. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "model_infer.h"

int main(int argc, char **argv) {
  static int8_t input[BISUP_MODEL_INPUT_BYTES];
  int8_t scores[BISUP_MODEL_CLASSES], confidence = 0;
  long count = argc > 1 ? atol(argv[1]) : 20000;
  if (fread(input, 1, sizeof(input), stdin) != sizeof(input)) return 1;
  struct timespec start, end;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (long i = 0; i < count; ++i) bisup_model_infer(input, scores, &confidence);
  clock_gettime(CLOCK_MONOTONIC, &end);
  double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
  printf("%.1f %d\n", ns / (double)count, (int)confidence); /* print an output so nothing is optimized away */
  return 0;
}
