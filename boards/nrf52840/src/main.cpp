// bisup device for nRF52840 (Arduino): int8 inference, in-graph supervisor, int8 decision, relay over USB serial.
//
// Two engines (platformio.ini): env nano33ble runs TFLM on the flashed model; env nano33ble_engine_c
// runs bisup's generated C (model_infer.c from `bisup export`, no interpreter) with the weights
// compiled in, and checks at boot that the flashed image holds the same model (SHA-256).
//
// The model image (model, int8 threshold, SHA-256) is flashed separately by `bisup flash --board
// nrf52840` (pyocd) at BISUP_MODEL_ADDRESS, the board profile's model_offset, and read in place, so
// a new model needs no rebuild. model_data.h/.cc come from `bisup export`.
#include <Arduino.h>

#include "bisup_app.h"
#include "bisup_image.h"
#ifdef BISUP_ENGINE_C
#include "model_infer.h"
#define INPUT_BYTES BISUP_MODEL_INPUT_BYTES
#define NUM_CLASSES BISUP_MODEL_CLASSES
#else
#include <TensorFlowLite.h>

#include "model_data.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#define INPUT_BYTES kModelDataInputBytes
#define NUM_CLASSES kModelDataNumClasses
#endif

namespace {
bisup_app g_app;
bool g_ready = false;
#ifdef BISUP_ENGINE_C
int8_t g_input[INPUT_BYTES];
#else
alignas(16) uint8_t g_arena[kModelDataArenaBytes];
tflite::MicroInterpreter* g_interpreter = nullptr;
#endif

void link_write(void*, const uint8_t* data, size_t len) { Serial.write(data, len); }
uint32_t now_ms(void*) { return millis(); }
bool link_read(void*, uint8_t* byte) {
  if (Serial.available() <= 0) return false;
  *byte = static_cast<uint8_t>(Serial.read());
  return true;
}

// A new boot id per boot from the nRF52840's RNG peripheral (thermal noise), so the bridge never answers
// this boot from the cache of the last one (firmware_bridge/PROTOCOL.md, "Boot id").
uint32_t boot_id() {
  uint32_t id = 0;
  NRF_RNG->CONFIG = RNG_CONFIG_DERCEN_Msk;  // bias correction
  NRF_RNG->TASKS_START = 1;
  for (int i = 0; i < 4; ++i) {
    NRF_RNG->EVENTS_VALRDY = 0;
    while (NRF_RNG->EVENTS_VALRDY == 0) {
    }
    id = (id << 8) | NRF_RNG->VALUE;
  }
  NRF_RNG->TASKS_STOP = 1;
  return id;
}

// Replace with your sensor (quantize with kModelDataInputScale / kModelDataInputZeroPoint, or
// BISUP_MODEL_INPUT_SCALE / BISUP_MODEL_INPUT_ZERO_POINT).
void acquire_input(int8_t* input) { memset(input, 0, INPUT_BYTES); }

uint16_t argmax(const int8_t* scores) {
  uint16_t label = 0;
  for (uint16_t k = 1; k < NUM_CLASSES; ++k) label = scores[k] > scores[label] ? k : label;
  return label;
}
}  // namespace

void setup() {
  Serial.begin(921600);
  static bisup_image image;
  // The image's size is checked against the rest of flash from BISUP_MODEL_ADDRESS.
  if (bisup_image_open(reinterpret_cast<const uint8_t*>(BISUP_MODEL_ADDRESS), 0x100000u - BISUP_MODEL_ADDRESS,
                       &image) != BISUP_IMAGE_OK) {
    return;  // nothing flashed yet: run `bisup flash`
  }
#ifdef BISUP_ENGINE_C
  static const uint8_t compiled_model[32] = BISUP_MODEL_SHA256;
  if (memcmp(compiled_model, image.hash, sizeof(compiled_model)) != 0) return;  // flash the matching bundle
#else
  static ModelDataOpResolver resolver;
  RegisterModelDataOps(resolver);
  const tflite::Model* model = tflite::GetModel(image.model);
  static tflite::MicroInterpreter interpreter(model, resolver, g_arena, sizeof(g_arena));
  if (interpreter.AllocateTensors() != kTfLiteOk) return;
  g_interpreter = &interpreter;
#endif
  bisup_proto_client_config link = {link_write, now_ms, nullptr, 500, 3, boot_id()};
  bisup_app_init(&g_app, &link, image.threshold_int8);
  g_ready = true;
}

void loop() {
  if (!g_ready) return;
#ifdef BISUP_ENGINE_C
  int8_t* input = g_input;
  int8_t scores[NUM_CLASSES], confidence;
  acquire_input(input);
  bisup_model_infer(input, scores, &confidence);
#else
  int8_t* input = g_interpreter->input(0)->data.int8;
  acquire_input(input);
  g_interpreter->Invoke();
  const int8_t* scores = g_interpreter->output(kModelDataScoresOutput)->data.int8;
  int8_t confidence = g_interpreter->output(kModelDataConfidenceOutput)->data.int8[0];
#endif
  bisup_app_result result = bisup_app_decide(&g_app, input, INPUT_BYTES, argmax(scores), confidence, link_read,
                                             nullptr);
  (void)result;  // act on result.label; result.source says local / remote / fallback
}
