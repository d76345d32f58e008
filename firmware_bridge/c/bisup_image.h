/*
 * bisup model image reader: find the TFLite model, its int8 threshold and its SHA-256 in a flash
 * region written by `bisup flash`, so that a new model needs no firmware rebuild.
 *
 * Layout (little-endian, see firmware_bridge/image.py): "BSUP", u16 version 1, u16 header size 64,
 * u32 model size, i16 threshold, u16 0, 32-byte SHA-256, 16 bytes 0, then the model.
 * On ESP32 boards the image sits inside an ESP firmware-image container with one segment (the
 * container lets esptool check it); the reader skips that container's 32-byte prefix.
 * The reader checks structure and the threshold's range (-128..128, as image.py does); a board with a
 * SHA-256 engine may verify `hash` as well.
 *
 * Names: functions and types start with bisup_image_, macros and constants with BISUP_IMAGE_.
 * Every public C name of bisup starts with bisup_<module>_ or BISUP_<MODULE>_ (README, "Firmware templates").
 */
#ifndef BISUP_IMAGE_H_
#define BISUP_IMAGE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BISUP_IMAGE_HEADER_BYTES 64u
#define BISUP_IMAGE_THRESHOLD_MIN (-128) /* the range firmware_bridge/image.py enforces: int8 confidences, */
#define BISUP_IMAGE_THRESHOLD_MAX 128    /* and 128 for "never trust the local answer" */

typedef enum {
  BISUP_IMAGE_OK = 0,
  BISUP_IMAGE_TOO_SMALL = 1,    /* the region is shorter than the header */
  BISUP_IMAGE_BAD_MAGIC = 2,    /* nothing flashed, or another image */
  BISUP_IMAGE_BAD_VERSION = 3,  /* flashed by a newer bisup */
  BISUP_IMAGE_TRUNCATED = 4,    /* the model runs past the region */
  BISUP_IMAGE_BAD_CONTAINER = 5, /* an ESP container with other than one segment */
  BISUP_IMAGE_BAD_THRESHOLD = 6  /* a threshold outside -128..128, which bisup never writes */
} bisup_image_status;

typedef struct {
  const uint8_t *model; /* 16-byte aligned when the region is */
  uint32_t model_bytes;
  int16_t threshold_int8;
  const uint8_t *hash; /* 32 bytes: what HELLO reports */
} bisup_image;

bisup_image_status bisup_image_open(const uint8_t *region, size_t region_bytes, bisup_image *out);

#ifdef __cplusplus
}
#endif

#endif /* BISUP_IMAGE_H_ */
