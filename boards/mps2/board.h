/*
 * The QEMU MPS2 boards' shared part, used by both HIL programs (main_model.c: one model; main_stages.c:
 * a multi-exit device) and by main_engine.c (the generated model alone, for the kernels' checks): the
 * CMSDK UART, SysTick time, the boot id, and the frame I/O with the host.
 *
 * Device time: SysTick counts the core clock (BISUP_CPU_HZ). Under QEMU's -icount shift=0 one
 * instruction takes one nanosecond of virtual time, so cycles counted here are instructions / (1e9 /
 * BISUP_CPU_HZ).
 *
 * Boot id: the MPS2 has no TRNG, so `bisup hil` plays one: QEMU's generic loader writes a random word
 * at _boot_entropy (the last word of RAM, outside .data/.bss) before the CPU starts. A real board draws
 * it from its RNG (esp_random, the nRF RNG peripheral).
 *
 * Names: functions and types start with bisup_board_.
 */
#ifndef BISUP_BOARD_H_
#define BISUP_BOARD_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bisup_proto.h"

/* What a HIL program gives the board: what HELLO reports, and what it does with one input. */
typedef struct {
  const uint8_t *model_hash; /* 32 bytes */
  uint32_t input_bytes;      /* FEED must carry exactly this many int8 values */
  /* Infers on `input` and decides as in the field (relaying through bisup_board_read when unsure); fills
   * report's label, source, rejected, local_label and local_confidence; returns the inference's cycles. */
  uint32_t (*infer_and_decide)(const int8_t *input, bisup_proto_msg *report);
} bisup_board_program;

/* UART, SysTick and the boot id. */
void bisup_board_init(void);
/* The request state machine's link to the host: UART, clock, boot id, timeout and retries (hil_config.h). */
bisup_proto_client_config bisup_board_link(void);
/* Polls the UART for one byte (a bisup_app_read_byte). */
bool bisup_board_read(void *ctx, uint8_t *byte);
/* Writes raw bytes to the UART (main_engine.c's unframed line; the HIL programs send frames). */
void bisup_board_write(const uint8_t *data, size_t len);
/* Core cycles since boot (wraps after 2^32 / BISUP_CPU_HZ seconds of device time). */
uint32_t bisup_board_cycles(void);
/* PROFILE: the cycles of each of `count` layers or stages of input `seq`. */
void bisup_board_send_profile(uint32_t seq, const uint32_t *cycles, int count);
/* Greets the host until it greets back, then answers FEED, HELLO and PING for ever. */
void bisup_board_serve(const bisup_board_program *program);

#endif /* BISUP_BOARD_H_ */
