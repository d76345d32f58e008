/* Host harness for generated models: int8 inputs on stdin, scores then confidence per input on stdout.
 * Driven by tests/test_engine.py, which compares the bytes with the tflite-micro interpreter's. */
#include <stdio.h>

#include "model_infer.h"

int main(void) {
  static int8_t input[BISUP_MODEL_INPUT_BYTES];
  int8_t scores[BISUP_MODEL_CLASSES], confidence[1];
  while (fread(input, 1, sizeof(input), stdin) == sizeof(input)) {
    if (bisup_model_infer(input, scores, confidence) != 0) return 1;
    fwrite(scores, 1, sizeof(scores), stdout);
    fwrite(confidence, 1, sizeof(confidence), stdout);
  }
  return 0;
}
