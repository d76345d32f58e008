/* Reads a flash region from a file and prints what bisup_image_open finds, for tests/test_flash.py. */
#include <stdio.h>
#include <stdlib.h>

#include "bisup_image.h"

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  FILE *f = fopen(argv[1], "rb");
  if (f == NULL) return 2;
  static uint8_t region[1 << 20];
  size_t n = fread(region, 1, sizeof(region), f);
  fclose(f);
  bisup_image image;
  bisup_image_status status = bisup_image_open(region, n, &image);
  printf("status=%d", (int)status);
  if (status == BISUP_IMAGE_OK) {
    printf(" offset=%ld bytes=%lu threshold=%d hash=", (long)(image.model - region), (unsigned long)image.model_bytes,
           (int)image.threshold_int8);
    for (int i = 0; i < 32; ++i) printf("%02x", image.hash[i]);
  }
  printf("\n");
  return 0;
}
