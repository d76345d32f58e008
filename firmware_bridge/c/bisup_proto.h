/*
 * bisup device library: wire protocol v1 (see firmware_bridge/PROTOCOL.md).
 *
 * Portable C99, no heap, no stdio. It encodes and decodes every message, frames them with
 * COBS + CRC-16/XMODEM, resynchronizes after line noise, decides whether the local answer is
 * trusted, and runs the request state machine (deadline, retry with the same sequence number,
 * fallback to the local answer).
 */
#ifndef BISUP_PROTO_H_
#define BISUP_PROTO_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BP_VERSION 1u
#define BP_MAX_BODY 1024u
#define BP_CRC_BYTES 2u
#define BP_HEADER_BYTES 6u
#define BP_HASH_BYTES 32u
#define BP_MAX_ID 32u
#define BP_DTYPE_INT8 1u
/* Longest COBS-encoded frame, without its 0x00 delimiter. */
#define BP_MAX_FRAME (BP_MAX_BODY + BP_CRC_BYTES + (BP_MAX_BODY + BP_CRC_BYTES) / 254u + 1u)

typedef enum {
  BP_HELLO = 0x01,
  BP_INFER = 0x10,
  BP_ANSWER = 0x11,
  BP_PING = 0x20,
  BP_PONG = 0x21,
  BP_FEED = 0x30,   /* HIL: host -> device, test input number seq */
  BP_REPORT = 0x31, /* HIL: device -> host, what the device made of it */
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
  union {
    struct {
      uint8_t fw[3];
      uint8_t hash[BP_HASH_BYTES];
      uint8_t id_len;
      char id[BP_MAX_ID + 1];
    } hello;
    struct {
      uint16_t label;
      int8_t confidence;
      uint8_t dtype;
      uint16_t count;
      const int8_t *data; /* points into the caller's buffer; no copy */
    } infer;
    struct {
      uint16_t label;
      uint16_t confidence_q16; /* confidence * 65535 */
      uint8_t source;          /* bp_source */
      uint8_t rejected;
    } answer;
    struct {
      uint8_t code;
      uint16_t detail;
    } error;
    struct {
      uint8_t dtype;
      uint16_t count;
      const int8_t *data; /* points into the caller's buffer; no copy */
    } feed;
    struct {
      uint16_t label;
      uint8_t source;
      uint8_t rejected;
      uint16_t local_label;
      int8_t local_confidence;
      uint32_t latency_us;
    } report;
  } u;
} bp_msg;

uint16_t bp_crc16(const uint8_t *data, size_t len);

/* COBS without the delimiter. Encode returns the length written, or 0 if cap is too small. */
size_t bp_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap);
bp_status bp_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len);

/* Bodies. Decode sets m->seq whenever the header is readable, even on error. */
size_t bp_encode_body(const bp_msg *m, uint8_t *out, size_t cap);
bp_status bp_decode_body(const uint8_t *body, size_t len, bp_msg *m);

/* Frames: COBS(body || crc16_le) 0x00. Encode returns the length including the delimiter. */
size_t bp_encode_frame(const bp_msg *m, uint8_t *out, size_t cap);
/* `frame` excludes the delimiter; `scratch` receives the decoded bytes (infer data points there). */
bp_status bp_decode_frame(const uint8_t *frame, size_t len, uint8_t *scratch, size_t cap, bp_msg *m);

/* Byte-stream reader: resynchronizes at each 0x00, bounded memory. */
typedef struct {
  uint8_t buf[BP_MAX_FRAME];
  uint8_t body[BP_MAX_FRAME];
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

/* Request state machine. */
typedef struct {
  void (*write)(void *ctx, const uint8_t *data, size_t len);
  uint32_t (*now_ms)(void *ctx);
  void *ctx;
  uint32_t timeout_ms;
  uint8_t max_retries;
} bp_client_config;

typedef enum { BP_CLIENT_IDLE = 0, BP_CLIENT_WAITING = 1, BP_CLIENT_DONE = 2 } bp_client_state;

typedef struct {
  bp_client_config cfg;
  bp_client_state state;
  bp_reader reader;
  uint8_t frame[BP_MAX_FRAME + 1];
  size_t frame_len;
  uint32_t seq;
  uint32_t deadline;
  uint8_t retries_left;
  uint16_t local_label;
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
/* Sends INFER and starts waiting. Returns false if a request is pending or the input is too big. */
bool bp_client_request(bp_client *c, uint32_t seq, const int8_t *input, uint16_t count, uint16_t local_label,
                       int8_t local_confidence);
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
