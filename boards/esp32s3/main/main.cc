// bisup device for ESP32-S3: int8 inference, in-graph supervisor, int8 decision, relay over UART0.
//
// Two engines, chosen at build time (main/CMakeLists.txt): TFLM runs the flashed model (default), or,
// with `idf.py -DBISUP_ENGINE=C build`, bisup's generated C (model_infer.c from `bisup export`: no
// interpreter, a static arena a fraction of TFLM's). With the C engine the weights are compiled in, so
// the flashed image must hold the same model: its SHA-256 is checked at boot.
//
// The model is NOT compiled in: `bisup flash` writes a bisup model image (model, int8 threshold,
// SHA-256) into the "model" data partition (subtype 0x40, see partitions.csv, which bisup generates
// from the board profile); it is mapped with esp_partition_mmap, so a new model needs no rebuild.
// model_data.h/.cc come from `bisup export` (for the op resolver and the constants; the linker
// drops the unused array).
#include <cstring>

#include "bisup_app.h"
#include "bisup_image.h"
#include "driver/uart.h"
#include "esp_partition.h"
#include "esp_random.h"
#include "esp_timer.h"
#ifdef BISUP_ENGINE_C
#include "model_infer.h"
#define INPUT_BYTES BISUP_MODEL_INPUT_BYTES
#define NUM_CLASSES BISUP_MODEL_CLASSES
#else
#include "model_data.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/schema/schema_generated.h"
#define INPUT_BYTES kModelDataInputBytes
#define NUM_CLASSES kModelDataNumClasses
#endif

namespace {
constexpr uart_port_t kLink = UART_NUM_0;
#ifndef BISUP_ENGINE_C
alignas(16) uint8_t g_arena[kModelDataArenaBytes];
#endif
bisup_app g_app;

void link_write(void*, const uint8_t* data, size_t len) { uart_write_bytes(kLink, data, len); }
uint32_t now_ms(void*) { return static_cast<uint32_t>(esp_timer_get_time() / 1000); }
bool link_read(void*, uint8_t* byte) { return uart_read_bytes(kLink, byte, 1, 0) == 1; }

bool map_model(bisup_image* image) {
  const esp_partition_t* part = esp_partition_find_first(ESP_PARTITION_TYPE_DATA,
                                                         static_cast<esp_partition_subtype_t>(0x40), "model");
  const void* ptr = nullptr;
  esp_partition_mmap_handle_t handle;
  if (part == nullptr || esp_partition_mmap(part, 0, part->size, ESP_PARTITION_MMAP_DATA, &ptr, &handle) != ESP_OK) {
    return false;
  }
  return bisup_image_open(static_cast<const uint8_t*>(ptr), part->size, image) == BISUP_IMAGE_OK;
}

// Replace with your sensor: fill `input` with INPUT_BYTES int8 values, quantized as q = round(x / scale) +
// zero point (kModelDataInputScale / kModelDataInputZeroPoint, or BISUP_MODEL_INPUT_SCALE / _ZERO_POINT).
void acquire_input(int8_t* input) { std::memset(input, 0, INPUT_BYTES); }

uint16_t argmax(const int8_t* scores) {
  uint16_t label = 0;
  for (uint16_t k = 1; k < NUM_CLASSES; ++k) label = scores[k] > scores[label] ? k : label;
  return label;
}
}  // namespace

extern "C" void app_main(void) {
  uart_driver_install(kLink, 2048, 2048, 0, nullptr, 0);
  bisup_image image;
  if (!map_model(&image)) return;  // nothing flashed yet: run `bisup flash`
  // A new boot id per boot from the hardware RNG: the bridge never answers this boot from the cache of
  // the last one, although sequence numbers restart at 1 (firmware_bridge/PROTOCOL.md, "Boot id").
  bisup_proto_client_config link = {link_write, now_ms, nullptr, 500, 3, esp_random()};
  bisup_app_init(&g_app, &link, image.threshold_int8);
#ifdef BISUP_ENGINE_C
  static const uint8_t compiled_model[32] = BISUP_MODEL_SHA256;
  if (std::memcmp(compiled_model, image.hash, sizeof(compiled_model)) != 0) return;  // flash the matching bundle
  static int8_t input[INPUT_BYTES];
  for (;;) {
    int8_t scores[NUM_CLASSES], confidence;
    acquire_input(input);
    bisup_model_infer(input, scores, &confidence);
    bisup_app_result result = bisup_app_decide(&g_app, input, INPUT_BYTES, argmax(scores), confidence, link_read,
                                               nullptr);
    (void)result;  // act on result.label; result.source says local / remote / fallback
  }
#else
  const tflite::Model* model = tflite::GetModel(image.model);
  ModelDataOpResolver resolver;
  RegisterModelDataOps(resolver);
  tflite::MicroInterpreter interpreter(model, resolver, g_arena, sizeof(g_arena));
  if (interpreter.AllocateTensors() != kTfLiteOk) return;
  for (;;) {
    int8_t* input = interpreter.input(0)->data.int8;
    acquire_input(input);
    interpreter.Invoke();
    const int8_t* scores = interpreter.output(kModelDataScoresOutput)->data.int8;
    int8_t confidence = interpreter.output(kModelDataConfidenceOutput)->data.int8[0];
    bisup_app_result result = bisup_app_decide(&g_app, input, INPUT_BYTES, argmax(scores), confidence, link_read,
                                               nullptr);
    (void)result;  // act on result.label; result.source says local / remote / fallback
  }
#endif
}
