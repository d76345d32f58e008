/*
 * bisup application step: the part of a device's main loop that is the same on every board.
 *
 * Given the local model's int8 label and confidence for an input, decide with the int8 threshold;
 * when unsure, relay the input to the bridge and wait (deadline, retries with the same sequence
 * number, local fallback). The board supplies the inference, the UART and a millisecond clock.
 *
 * Names: functions and types start with bisup_app_, macros and constants with BISUP_APP_.
 * Every public C name of bisup starts with bisup_<module>_ or BISUP_<MODULE>_ (README, "Firmware templates").
 */
#ifndef BISUP_APP_H_
#define BISUP_APP_H_

#include "bisup_proto.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifndef BISUP_APP_STATS_EVERY
#define BISUP_APP_STATS_EVERY 32u /* inferences between STATS messages (0: never send them) */
#endif

typedef struct {
  bisup_proto_client client;
  int16_t threshold_int8; /* from thresholds.json: local.threshold_int8 (128: never local) */
  uint32_t next_seq;
  bisup_proto_msg stats; /* counts since boot, sent as STATS so the bridge sees local answers too */
} bisup_app;

typedef struct {
  uint16_t label;
  uint8_t source; /* bisup_proto_source */
  bool rejected;  /* the remote supervisor refused the remote answer */
} bisup_app_result;

/* Polls the link for one received byte; returns false when none is waiting. */
typedef bool (*bisup_app_read_byte)(void *ctx, uint8_t *byte);

void bisup_app_init(bisup_app *app, const bisup_proto_client_config *link, int16_t threshold_int8);
bisup_app_result bisup_app_decide(bisup_app *app, const int8_t *input, uint32_t count, uint16_t local_label,
                                  int8_t local_confidence, bisup_app_read_byte read_byte, void *read_ctx);
/* Counts one inference the device answered itself (bisup_app_decide does this; a multi-exit device that
 * stops at an early exit calls it), and sends STATS every BISUP_APP_STATS_EVERY inferences. */
void bisup_app_count_local(bisup_app *app);
/* Relays unconditionally and waits: the raw input as INFER (stage 0) or, for a multi-exit device, the
 * activation at the cut after `stage` as SPLIT. A result with source BISUP_PROTO_SRC_FALLBACK means no usable remote
 * answer (the caller decides what to do: a multi-exit device runs its remaining stages). After a BUSY the app sends
 * nothing until the hold the bridge named has passed: such inputs are answered at once with the fallback and
 * counted as local in STATS (they never reached the bridge). */
bisup_app_result bisup_app_ask(bisup_app *app, uint8_t stage, const int8_t *data, uint32_t count, uint16_t local_label,
                               int8_t local_confidence, bisup_app_read_byte read_byte, void *read_ctx);

#ifdef __cplusplus
}
#endif

#endif /* BISUP_APP_H_ */
