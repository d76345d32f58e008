/*
 * The generated model alone on the emulated core, for checking the int8 kernels of each instruction set
 * byte for byte against tflite-micro and counting their instructions (toolkit/hil/model_run.py drives it).
 * No supervisor decision, no bridge, no model image: only inputs in, outputs and cycles out.
 *
 * Line format (little-endian words, no framing: QEMU's socket chardev is lossless and holds bytes back until
 * the UART takes them, so the host sends one input and reads its record):
 *   at boot        "BISE", kernel-set word, BISUP_MODEL_INPUT_BYTES, BISUP_MODEL_CLASSES, BISUP_MODEL_LAYERS
 *   per input      host -> board: BISUP_MODEL_INPUT_BYTES int8 values
 *                  board -> host: "R", input count so far, inference cycles, each layer's cycles,
 *                                 BISUP_MODEL_CLASSES int8 scores, the int8 confidence
 * The kernel-set word says what the build had in effect, as the compiler saw it (-mcpu and the defines), so
 * a wrong flag shows on the host rather than as slow code: bit 0 __ARM_FEATURE_DSP, bit 1 __ARM_FEATURE_MVE,
 * bit 2 BISUP_KERNELS_PORTABLE.
 */
#include <stddef.h>
#include <stdint.h>

#include "board.h"
#include "model_infer.h"

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#define KERNEL_DSP 1u
#else
#define KERNEL_DSP 0u
#endif
#if defined(__ARM_FEATURE_MVE) && __ARM_FEATURE_MVE
#define KERNEL_MVE 2u
#else
#define KERNEL_MVE 0u
#endif
#ifdef BISUP_KERNELS_PORTABLE
#define KERNEL_PORTABLE 4u
#else
#define KERNEL_PORTABLE 0u
#endif

static uint32_t layer_cycles[BISUP_MODEL_LAYERS];
static uint32_t infer_start;

/* Called by the generated code after each kernel (built with -DBISUP_MODEL_PROFILE_MARKS). */
void bisup_model_profile_mark(int layer) {
  static uint32_t layer_start;
  if (layer == 0) layer_start = infer_start;
  uint32_t now = bisup_board_cycles();
  layer_cycles[layer] = now - layer_start;
  layer_start = now;
}

static void send_word(uint32_t word) {
  uint8_t bytes[4] = {(uint8_t)word, (uint8_t)(word >> 8), (uint8_t)(word >> 16), (uint8_t)(word >> 24)};
  bisup_board_write(bytes, sizeof(bytes));
}

static void read_input(int8_t *input) {
  for (uint32_t i = 0; i < BISUP_MODEL_INPUT_BYTES;) {
    uint8_t byte;
    if (bisup_board_read(NULL, &byte)) input[i++] = (int8_t)byte;
  }
}

int main(void) {
  static int8_t input[BISUP_MODEL_INPUT_BYTES];
  int8_t outputs[BISUP_MODEL_CLASSES + 1]; /* the scores, then the confidence */
  bisup_board_init();
  bisup_board_write((const uint8_t *)"BISE", 4);
  send_word(KERNEL_DSP | KERNEL_MVE | KERNEL_PORTABLE);
  send_word(BISUP_MODEL_INPUT_BYTES);
  send_word(BISUP_MODEL_CLASSES);
  send_word(BISUP_MODEL_LAYERS);
  for (uint32_t count = 1;; ++count) {
    read_input(input);
    infer_start = bisup_board_cycles();
    bisup_model_infer(input, outputs, &outputs[BISUP_MODEL_CLASSES]);
    uint32_t cycles = bisup_board_cycles() - infer_start;
    bisup_board_write((const uint8_t *)"R", 1);
    send_word(count);
    send_word(cycles);
    for (int k = 0; k < BISUP_MODEL_LAYERS; ++k) send_word(layer_cycles[k]);
    bisup_board_write((const uint8_t *)outputs, sizeof(outputs));
  }
  return 0;
}
