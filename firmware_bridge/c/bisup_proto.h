/*
 * bisup device library: wire protocol v2 (see firmware_bridge/PROTOCOL.md).
 *
 * Portable C99, no heap, no stdio. It encodes and decodes every message, frames them with
 * COBS + CRC-16/XMODEM, resynchronizes after line noise, decides whether the local answer is
 * trusted, and runs the request state machine (deadline, retry with the same sequence number and
 * boot id, fallback to the local answer).
 *
 * Memory: the only frame-sized buffer is the stream reader's (BISUP_PROTO_MAX_FRAME bytes, decoded in
 * place). Frames are sent through a streaming COBS encoder with a 255-byte block, so a request is
 * re-encoded from the caller's input on every resend instead of being kept in a second buffer.
 * Define BISUP_PROTO_MAX_BODY (bytes) before including this header, or with -DBISUP_PROTO_MAX_BODY=..., to carry
 * larger inputs: a body is 10 header bytes, 8 INFER bytes, then the elements.
 *
 * Names: functions and types start with bisup_proto_, macros and constants with BISUP_PROTO_.
 * Every public C name of bisup starts with bisup_<module>_ or BISUP_<MODULE>_ (README, "Firmware templates").
 */
#ifndef BISUP_PROTO_H_
#define BISUP_PROTO_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BISUP_PROTO_VERSION 2u
#define BISUP_PROTO_LEGACY_VERSION 1u
#ifndef BISUP_PROTO_MAX_BODY
#define BISUP_PROTO_MAX_BODY 1024u
#endif
#define BISUP_PROTO_CRC_BYTES 2u
#define BISUP_PROTO_HEADER_BYTES 10u    /* version u8, type u8, seq u32, boot u32 */
#define BISUP_PROTO_INFER_FIXED_BYTES 8u /* label u16, confidence i8, dtype u8, count u32 */
#define BISUP_PROTO_SPLIT_FIXED_BYTES 9u /* stage u8, then INFER's fixed fields */
#define BISUP_PROTO_HASH_BYTES 32u
#define BISUP_PROTO_MAX_ID 32u
#define BISUP_PROTO_DTYPE_INT8 1u
/* The longest hold a BUSY may impose (its detail is capped to this), whatever a host asks. */
#define BISUP_PROTO_MAX_HOLD_MS 60000u
/* Longest COBS-encoded frame, without its 0x00 delimiter. */
#define BISUP_PROTO_MAX_FRAME \
  (BISUP_PROTO_MAX_BODY + BISUP_PROTO_CRC_BYTES + (BISUP_PROTO_MAX_BODY + BISUP_PROTO_CRC_BYTES) / 254u + 1u)

typedef enum {
  BISUP_PROTO_HELLO = 0x01,
  BISUP_PROTO_INFER = 0x10,
  BISUP_PROTO_ANSWER = 0x11,
  BISUP_PROTO_SPLIT = 0x12, /* split computing: the activation at the cut after `stage`, for the remote tail */
  BISUP_PROTO_PING = 0x20,
  BISUP_PROTO_PONG = 0x21,
  BISUP_PROTO_STATS = 0x22,  /* device -> host, counts since boot (not answered) */
  BISUP_PROTO_FEED = 0x30,   /* HIL: host -> device, test input number seq */
  BISUP_PROTO_REPORT = 0x31, /* HIL: device -> host, what the device made of it */
  BISUP_PROTO_PROFILE = 0x32, /* HIL: device -> host, cycles per layer of that inference */
  BISUP_PROTO_ERROR = 0x7F
} bisup_proto_type;

typedef enum {
  BISUP_PROTO_OK = 0,
  BISUP_PROTO_E_BAD_CRC = 1,
  BISUP_PROTO_E_BAD_COBS = 2,
  BISUP_PROTO_E_TOO_LONG = 3,
  BISUP_PROTO_E_BAD_VERSION = 4,
  BISUP_PROTO_E_BAD_TYPE = 5,
  BISUP_PROTO_E_BAD_LENGTH = 6,
  BISUP_PROTO_E_BAD_TENSOR = 7,
  BISUP_PROTO_E_REMOTE_UNAVAILABLE = 8,
  BISUP_PROTO_E_BUSY = 9, /* the bridge's admission limits refused the request; detail: ms to answer locally */
  BISUP_PROTO_E_NO_ROOM = 100 /* local only: the output buffer is too small */
} bisup_proto_status;

typedef enum { BISUP_PROTO_SRC_LOCAL = 0, BISUP_PROTO_SRC_REMOTE = 1, BISUP_PROTO_SRC_FALLBACK = 2 } bisup_proto_source;

typedef struct {
  uint8_t type;
  uint32_t seq;
  uint32_t boot; /* the device's boot id: drawn at boot, echoed by the host */
  union {
    struct {
      uint8_t fw[3];
      uint8_t hash[BISUP_PROTO_HASH_BYTES];
      uint32_t max_body; /* the sender's largest body (BISUP_PROTO_MAX_BODY on a device) */
      uint8_t id_len;
      char id[BISUP_PROTO_MAX_ID + 1];
    } hello;
    struct {
      uint16_t label;
      int8_t confidence;
      uint8_t dtype;
      uint32_t count;
      const int8_t *data; /* points into the caller's buffer; no copy */
      uint8_t stage;      /* BISUP_PROTO_SPLIT only (INFER and SPLIT share this struct): the cut's stage, 1-based */
    } infer;
    struct {
      uint16_t label;
      uint16_t confidence_q16; /* confidence * 65535 */
      uint8_t source;          /* bisup_proto_source */
      uint8_t rejected;
      uint8_t load; /* flag bits 1..3: the bridge's load level 0..7 (0 also from a bridge that does not say) */
    } answer;
    struct {
      uint8_t code;
      uint32_t detail;
    } error;
    struct {
      uint8_t dtype;
      uint32_t count;
      const int8_t *data; /* points into the caller's buffer; no copy */
    } feed;
    struct {
      uint16_t label;
      uint8_t source;
      uint8_t rejected;
      uint16_t local_label;
      int8_t local_confidence;
      uint32_t latency_us;
      uint32_t infer_cycles; /* SysTick cycles of the local inference alone */
    } report;
    struct {
      uint32_t inferences;
      uint32_t local;   /* answered locally */
      uint32_t relayed; /* sent as INFER or SPLIT */
      uint8_t scheduled; /* 1: the 16-byte form, with out_of_range (a multi-exit device with a schedule table) */
      uint32_t out_of_range; /* inputs decided off the calibrated link range (the table's safe entry) */
    } stats;
    struct {
      uint8_t count;
      const uint8_t *cycles_le; /* count x u32, little-endian; points into the caller's buffer */
    } profile;
  } u;
} bisup_proto_msg;

uint16_t bisup_proto_crc16(const uint8_t *data, size_t len);

/* COBS without the delimiter; out may be in (decoding never overtakes reading). */
bisup_proto_status bisup_proto_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len);

/* Bodies. Decode sets m->seq (and m->boot) whenever the header is readable, even on error. */
bisup_proto_status bisup_proto_decode_body(const uint8_t *body, size_t len, bisup_proto_msg *m);

/* Where frames go: a UART write, a socket send, a buffer. */
typedef void (*bisup_proto_write_fn)(void *ctx, const uint8_t *data, size_t len);

/* Frames: COBS(body || crc16_le) 0x00. bisup_proto_send_frame streams one through `write` in blocks of at
 * most 255 bytes; it returns false, writing nothing, when the body would exceed max_body. */
bool bisup_proto_send_frame(const bisup_proto_msg *m, uint32_t max_body, bisup_proto_write_fn write, void *ctx);
/* The same frame into a buffer; returns the length including the delimiter, or 0 if it does not fit. */
size_t bisup_proto_encode_frame(const bisup_proto_msg *m, uint8_t *out, size_t cap);
/* `frame` excludes the delimiter; `scratch` receives the decoded bytes (infer data points there).
 * `scratch` may be `frame` itself: COBS decodes in place. */
bisup_proto_status bisup_proto_decode_frame(const uint8_t *frame, size_t len, uint8_t *scratch, size_t cap,
                                            bisup_proto_msg *m);

/* Byte-stream reader: resynchronizes at each 0x00, bounded memory, decodes in place. */
typedef struct {
  uint8_t buf[BISUP_PROTO_MAX_FRAME];
  size_t len;
  bool overflow;
} bisup_proto_reader;

void bisup_proto_reader_init(bisup_proto_reader *r);
/* Push one byte. *ready becomes true when a frame ended: then the return value is BISUP_PROTO_OK with
 * *m filled, or the error that frame had. Empty frames are ignored. */
bisup_proto_status bisup_proto_reader_push(bisup_proto_reader *r, uint8_t byte, bisup_proto_msg *m, bool *ready);

/* The firmware's decision: the local answer is trusted iff confidence >= threshold (int8 units;
 * threshold 128 means never). */
static inline bool bisup_proto_trusted(int8_t confidence, int16_t threshold) {
  return (int16_t)confidence >= threshold;
}

/* Request state machine. boot_id: a value drawn anew at every boot (a hardware RNG, or a persisted
 * boot counter mixed with a device secret); the host keys its retry cache on it, and answers for
 * another boot id are ignored, so sequence numbers may restart at 1 after a reset. */
typedef struct {
  bisup_proto_write_fn write;
  uint32_t (*now_ms)(void *ctx);
  void *ctx;
  uint32_t timeout_ms;
  uint8_t max_retries;
  uint32_t boot_id;
} bisup_proto_client_config;

typedef enum {
  BISUP_PROTO_CLIENT_IDLE = 0,
  BISUP_PROTO_CLIENT_WAITING = 1,
  BISUP_PROTO_CLIENT_DONE = 2
} bisup_proto_client_state;

typedef struct {
  bisup_proto_client_config cfg;
  bisup_proto_client_state state;
  bisup_proto_reader reader;
  bisup_proto_msg request; /* re-sent as is; its input stays the caller's until the request is DONE */
  uint32_t deadline;
  uint8_t retries_left;
  /* result, valid in BISUP_PROTO_CLIENT_DONE */
  uint16_t label;
  uint16_t confidence_q16;
  uint8_t source;
  bool rejected;
  uint8_t load; /* the answer's load hint (0 after a timeout or an ERROR) */
  /* after a BUSY: relay nothing before hold_until (ms), answer locally instead */
  bool holding;
  uint32_t hold_until;
  /* counters */
  uint32_t resends;
  uint32_t bad_frames;
  uint32_t busy; /* BUSY answers: requests the bridge refused under load */
} bisup_proto_client;

void bisup_proto_client_init(bisup_proto_client *c, const bisup_proto_client_config *cfg);
/* Sends INFER and starts waiting. Returns false if a request is pending, the input is too big, or the client
 * holds off after a BUSY (bisup_proto_client_holding): answer locally then.
 * `input` must stay valid and unchanged until the request is DONE (resends read it again). */
bool bisup_proto_client_request(bisup_proto_client *c, uint32_t seq, const int8_t *input, uint32_t count,
                                uint16_t local_label, int8_t local_confidence);
/* Sends SPLIT (split computing): the int8 activation at the cut after `stage` (1-based), which the host's
 * remote tail finishes. Same rules as bisup_proto_client_request. A DONE request with source
 * BISUP_PROTO_SRC_FALLBACK (the link is gone, or the remote supervisor rejected the answer) tells a multi-exit
 * device to finish locally at its last exit. */
bool bisup_proto_client_request_split(bisup_proto_client *c, uint32_t seq, uint8_t stage, const int8_t *activation,
                                      uint32_t count, uint16_t local_label, int8_t local_confidence);
/* Bytes received from the host. */
void bisup_proto_client_feed(bisup_proto_client *c, const uint8_t *data, size_t len);
/* Checks the deadline: resends with the same seq, or ends in the local fallback. */
bisup_proto_client_state bisup_proto_client_poll(bisup_proto_client *c);
/* True while a BUSY's hold lasts. A BUSY (ERROR code 9) ends its request at once with the local fallback, without
 * a resend, and asks the device to relay nothing for `detail` ms (at most BISUP_PROTO_MAX_HOLD_MS): requests
 * refused meanwhile are answered locally, so an overloaded bridge sees no retry storm. */
bool bisup_proto_client_holding(bisup_proto_client *c);
/* Back to idle after the caller has read a DONE result. */
void bisup_proto_client_reset(bisup_proto_client *c);

#ifdef __cplusplus
}
#endif

#endif /* BISUP_PROTO_H_ */
