/*
 * Generated models alone on the emulated core, for checking the int8 kernels of each instruction set byte
 * for byte against tflite-micro and counting their instructions (toolkit/hil/model_run.py drives it). No
 * supervisor decision, no bridge, no model image: inputs in, outputs and cycles out. Several models share
 * one firmware, because building it costs more host time than running them.
 *
 * engine_models.h (written by model_run.py) includes each model's header (m0_infer.h, ...) and lists them:
 * BISUP_ENGINE_MODEL_LIST is X(m0, M0) X(m1, M1) ..., BISUP_ENGINE_MAX_INPUT_BYTES, _MAX_CLASSES and
 * _MAX_LAYERS bound their sizes.
 *
 * Line format (little-endian words, no framing: QEMU's socket chardev is lossless and holds bytes back until
 * the UART takes them, so the host sends one input and reads its answer):
 *   at boot        "BISE", the ACLE word, the length of the kernels' ISA name and the name (bisup_kernel_isa():
 *                  "mve", "dsp" or "portable"), model count, then each model's input bytes, classes and layers
 *   per input      host -> board: the model's index (word), its input bytes of int8 values
 *                  board -> host: "R", inputs so far, inference cycles, each layer's cycles, the model's
 *                                 int8 scores, its int8 confidence ("E" alone: no such model)
 * The ACLE word says what the build had in effect as the compiler saw it (-mcpu and the defines), and the ISA
 * name which kernel set the kernels chose from it, so a wrong flag shows on the host rather than as slow code:
 * bit 0 __ARM_FEATURE_DSP, bit 1 __ARM_FEATURE_MVE, bit 2 BISUP_KERNELS_PORTABLE.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bisup_kernels.h"
#include "board.h"
#include "engine_models.h"

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

typedef struct {
  int (*infer)(const int8_t *input, int8_t *scores, int8_t *confidence);
  uint32_t input_bytes, classes, layers;
} engine_model;

#define X(name, NAME) {bisup_##name##_infer, BISUP_##NAME##_INPUT_BYTES, BISUP_##NAME##_CLASSES, BISUP_##NAME##_LAYERS},
static const engine_model models[] = {BISUP_ENGINE_MODEL_LIST};
#undef X
#define MODELS (sizeof(models) / sizeof(models[0]))

static uint32_t layer_cycles[BISUP_ENGINE_MAX_LAYERS];
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

static void read_bytes(uint8_t *into, uint32_t count) {
  for (uint32_t i = 0; i < count;) {
    if (bisup_board_read(NULL, &into[i])) ++i;
  }
}

static uint32_t read_word(void) {
  uint8_t bytes[4];
  read_bytes(bytes, sizeof(bytes));
  return bytes[0] | (uint32_t)bytes[1] << 8 | (uint32_t)bytes[2] << 16 | (uint32_t)bytes[3] << 24;
}

static void greet(void) {
  bisup_board_write((const uint8_t *)"BISE", 4);
  send_word(KERNEL_DSP | KERNEL_MVE | KERNEL_PORTABLE);
  const char *isa = bisup_kernel_isa();
  send_word((uint32_t)strlen(isa));
  bisup_board_write((const uint8_t *)isa, strlen(isa));
  send_word(MODELS);
  for (size_t k = 0; k < MODELS; ++k) {
    send_word(models[k].input_bytes);
    send_word(models[k].classes);
    send_word(models[k].layers);
  }
}

int main(void) {
  static int8_t input[BISUP_ENGINE_MAX_INPUT_BYTES];
  int8_t outputs[BISUP_ENGINE_MAX_CLASSES + 1]; /* the scores, then the confidence */
  bisup_board_init();
  greet();
  for (uint32_t count = 0;;) {
    uint32_t index = read_word();
    if (index >= MODELS) {
      bisup_board_write((const uint8_t *)"E", 1);
      continue;
    }
    const engine_model *model = &models[index];
    read_bytes((uint8_t *)input, model->input_bytes);
    infer_start = bisup_board_cycles();
    model->infer(input, outputs, &outputs[model->classes]);
    uint32_t cycles = bisup_board_cycles() - infer_start;
    bisup_board_write((const uint8_t *)"R", 1);
    send_word(++count);
    send_word(cycles);
    for (uint32_t k = 0; k < model->layers; ++k) send_word(layer_cycles[k]);
    bisup_board_write((const uint8_t *)outputs, model->classes + 1u);
  }
  return 0;
}
