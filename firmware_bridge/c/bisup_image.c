#include "bisup_image.h"

#include <string.h>

#define ESP_IMAGE_MAGIC 0xE9u
#define ESP_CONTAINER_BYTES 32u /* 24-byte image header + 8-byte segment header */

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* Skip an ESP firmware-image container: its one segment is the bisup image. */
static bisup_image_status unwrap_esp(const uint8_t **region, size_t *bytes) {
  if (*bytes < ESP_CONTAINER_BYTES) return BISUP_IMAGE_TOO_SMALL;
  if ((*region)[1] != 1u) return BISUP_IMAGE_BAD_CONTAINER;
  uint32_t segment = le32(*region + 28);
  if (segment > *bytes - ESP_CONTAINER_BYTES) return BISUP_IMAGE_TRUNCATED;
  *region += ESP_CONTAINER_BYTES;
  *bytes = segment;
  return BISUP_IMAGE_OK;
}

bisup_image_status bisup_image_open(const uint8_t *region, size_t region_bytes, bisup_image *out) {
  if (region_bytes > 0 && region[0] == ESP_IMAGE_MAGIC) {
    bisup_image_status status = unwrap_esp(&region, &region_bytes);
    if (status != BISUP_IMAGE_OK) return status;
  }
  if (region_bytes < BISUP_IMAGE_HEADER_BYTES) return BISUP_IMAGE_TOO_SMALL;
  if (memcmp(region, "BSUP", 4) != 0) return BISUP_IMAGE_BAD_MAGIC;
  if (le16(region + 4) != 1u || le16(region + 6) != BISUP_IMAGE_HEADER_BYTES) return BISUP_IMAGE_BAD_VERSION;
  uint32_t size = le32(region + 8);
  if (size > region_bytes - BISUP_IMAGE_HEADER_BYTES) return BISUP_IMAGE_TRUNCATED;
  /* As image.py refuses it: a threshold past the int8 range would trust every answer or none, silently. */
  uint16_t raw = le16(region + 12);
  int32_t threshold = (int32_t)raw - (raw >= 0x8000u ? 0x10000 : 0); /* i16, without an implementation-defined cast */
  if (threshold < BISUP_IMAGE_THRESHOLD_MIN || threshold > BISUP_IMAGE_THRESHOLD_MAX) return BISUP_IMAGE_BAD_THRESHOLD;
  out->model = region + BISUP_IMAGE_HEADER_BYTES;
  out->model_bytes = size;
  out->threshold_int8 = (int16_t)threshold;
  out->hash = region + 16;
  return BISUP_IMAGE_OK;
}
