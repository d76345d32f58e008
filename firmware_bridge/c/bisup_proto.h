/*
 * bisup device library: wire protocol v2 (see firmware_bridge/PROTOCOL.md).
 *
 * Portable C99, no heap, no stdio. It encodes and decodes every message, frames them with
 * COBS + CRC-16/XMODEM, resynchronizes after line noise, decides whether the local answer is
 * trusted, and runs the request state machine (deadline, retry with the same sequence number and
 * boot id, fallback to the local answer).
 *
 * Memory: the only frame-sized buffer is the stream reader's (BP_MAX_FRAME bytes, decoded in
 * place). Frames are sent through a streaming COBS encoder with a 255-byte block, so a request is
 * re-encoded from the caller's input on every resend instead of being kept in a second buffer.
 * Define BP_MAX_BODY (bytes) before including this header, or with -DBP_MAX_BODY=..., to carry
 * larger inputs: a body is 10 header bytes, 8 INFER bytes, then the elements.
 */
#ifndef BISUP_PROTO_H_
#define BISUP_PROTO_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BP_VERSION 2u
#define BP_LEGACY_VERSION 1u
#ifndef BP_MAX_BODY
#define BP_MAX_BODY 1024u
#endif
#define BP_CRC_BYTES 2u
#define BP_HEADER_BYTES 10u    /* version u8, type u8, seq u32, boot u32 */
#define BP_INFER_FIXED_BYTES 8u /* label u16, confidence i8, dtype u8, count u32 */
#define BP_SPLIT_FIXED_BYTES 9u /* stage u8, then INFER's fixed fields */
#define BP_HASH_BYTES 32u
#define BP_MAX_ID 32u
#define BP_DTYPE_INT8 1u
/* Longest COBS-encoded frame, without its 0x00 delimiter. */
#define BP_MAX_FRAME (BP_MAX_BODY + BP_CRC_BYTES + (BP_MAX_BODY + BP_CRC_BYTES) / 254u + 1u)

typedef enum {
  BP_HELLO = 0x01,
  BP_INFER = 0x10,
  BP_ANSWER = 0x11,
  BP_SPLIT = 0x12, /* split computing: the activation at the cut after `stage`, for the remote tail */
  BP_PING = 0x20,
  BP_PONG = 0x21,
  BP_STATS = 0x22,  /* device -> host, counts since boot (not answered) */
  BP_FEED = 0x30,   /* HIL: host -> device, test input number seq */
  BP_REPORT = 0x31, /* HIL: device -> host, what the device made of it */
  BP_PROFILE = 0x32, /* HIL: device -> host, cycles per layer of that inference */
  BP_ERROR = 0x7F
} bp_type;

typedef enum {
  BP_OK = 0,
  BP_E_BAD_CRC = 1,
  BP_E_BAD_COBS = 2,
  BP_E_TOO_LONG = 3,
  BP_E_BAD_VERSION = 4,
  BP_E_BAD_TYPE = 5,
  BP_E_BAD_LENGTH = 6,
  BP_E_BAD_TENSOR = 7,
  BP_E_REMOTE_UNAVAILABLE = 8,
  BP_E_NO_ROOM = 100 /* local only: the output buffer is too small */
} bp_status;

typedef enum { BP_SRC_LOCAL = 0, BP_SRC_REMOTE = 1, BP_SRC_FALLBACK = 2 } bp_source;

typedef struct {
  uint8_t type;
  uint32_t seq;
  uint32_t boot; /* the device's boot id: drawn at boot, echoed by the host */
  union {
    struct {
      uint8_t fw[3];
      uint8_t hash[BP_HASH_BYTES];
      uint32_t max_body; /* the sender's largest body (BP_MAX_BODY on a device) */
      uint8_t id_len;
      char id[BP_MAX_ID + 1];
    } hello;
    struct {
      uint16_t label;
      int8_t confidence;
      uint8_t dtype;
      uint32_t count;
      const int8_t *data; /* points into the caller's buffer; no copy */
      uint8_t stage;      /* BP_SPLIT only (INFER and SPLIT share this struct): the cut's stage, 1-based */
    } infer;
    struct {
      uint16_t label;
      uint16_t confidence_q16; /* confidence * 65535 */
      uint8_t source;          /* bp_source */
      uint8_t rejected;
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
    } stats;
    struct {
      uint8_t count;
      const uint8_t *cycles_le; /* count x u32, little-endian; points into the caller's buffer */
    } profile;
  } u;
} bp_msg;

uint16_t bp_crc16(const uint8_t *data, size_t len);

/* COBS without the delimiter; out may be in (decoding never overtakes reading). */
bp_status bp_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len);

/* Bodies. Decode sets m->seq (and m->boot) whenever the header is readable, even on error. */
bp_status bp_decode_body(const uint8_t *body, size_t len, bp_msg *m);

/* Where frames go: a UART write, a socket send, a buffer. */
typedef void (*bp_write_fn)(void *ctx, const uint8_t *data, size_t len);

/* Frames: COBS(body || crc16_le) 0x00. bp_send_frame streams one through `write` in blocks of at
 * most 255 bytes; it returns false, writing nothing, when the body would exceed max_body. */
bool bp_send_frame(const bp_msg *m, uint32_t max_body, bp_write_fn write, void *ctx);
/* The same frame into a buffer; returns the length including the delimiter, or 0 if it does not fit. */
size_t bp_encode_frame(const bp_msg *m, uint8_t *out, size_t cap);
/* `frame` excludes the delimiter; `scratch` receives the decoded bytes (infer data points there).
 * `scratch` may be `frame` itself: COBS decodes in place. */
bp_status bp_decode_frame(const uint8_t *frame, size_t len, uint8_t *scratch, size_t cap, bp_msg *m);

/* Byte-stream reader: resynchronizes at each 0x00, bounded memory, decodes in place. */
typedef struct {
  uint8_t buf[BP_MAX_FRAME];
  size_t len;
  bool overflow;
} bp_reader;

void bp_reader_init(bp_reader *r);
/* Push one byte. *ready becomes true when a frame ended: then the return value is BP_OK with
 * *m filled, or the error that frame had. Empty frames are ignored. */
bp_status bp_reader_push(bp_reader *r, uint8_t byte, bp_msg *m, bool *ready);

/* The firmware's decision: the local answer is trusted iff confidence >= threshold (int8 units;
 * threshold 128 means never). */
static inline bool bp_trusted(int8_t confidence, int16_t threshold) { return (int16_t)confidence >= threshold; }

/* Request state machine. boot_id: a value drawn anew at every boot (a hardware RNG, or a persisted
 * boot counter mixed with a device secret); the host keys its retry cache on it, and answers for
 * another boot id are ignored, so sequence numbers may restart at 1 after a reset. */
typedef struct {
  bp_write_fn write;
  uint32_t (*now_ms)(void *ctx);
  void *ctx;
  uint32_t timeout_ms;
  uint8_t max_retries;
  uint32_t boot_id;
} bp_client_config;

typedef enum { BP_CLIENT_IDLE = 0, BP_CLIENT_WAITING = 1, BP_CLIENT_DONE = 2 } bp_client_state;

typedef struct {
  bp_client_config cfg;
  bp_client_state state;
  bp_reader reader;
  bp_msg request; /* re-sent as is; its input stays the caller's until the request is DONE */
  uint32_t deadline;
  uint8_t retries_left;
  /* result, valid in BP_CLIENT_DONE */
  uint16_t label;
  uint16_t confidence_q16;
  uint8_t source;
  bool rejected;
  /* counters */
  uint32_t resends;
  uint32_t bad_frames;
} bp_client;

void bp_client_init(bp_client *c, const bp_client_config *cfg);
/* Sends INFER and starts waiting. Returns false if a request is pending or the input is too big.
 * `input` must stay valid and unchanged until the request is DONE (resends read it again). */
bool bp_client_request(bp_client *c, uint32_t seq, const int8_t *input, uint32_t count, uint16_t local_label,
                       int8_t local_confidence);
/* Sends SPLIT (split computing): the int8 activation at the cut after `stage` (1-based), which the host's
 * remote tail finishes. Same rules as bp_client_request. A DONE request with source BP_SRC_FALLBACK (the
 * link is gone, or the remote supervisor rejected the answer) tells a multi-exit device to finish locally
 * at its last exit. */
bool bp_client_request_split(bp_client *c, uint32_t seq, uint8_t stage, const int8_t *activation, uint32_t count,
                             uint16_t local_label, int8_t local_confidence);
/* Bytes received from the host. */
void bp_client_feed(bp_client *c, const uint8_t *data, size_t len);
/* Checks the deadline: resends with the same seq, or ends in the local fallback. */
bp_client_state bp_client_poll(bp_client *c);
/* Back to idle after the caller has read a DONE result. */
void bp_client_reset(bp_client *c);

#ifdef __cplusplus
}
#endif

#endif /* BISUP_PROTO_H_ */
