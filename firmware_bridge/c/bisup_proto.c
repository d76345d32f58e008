/* bisup device library: see bisup_proto.h and firmware_bridge/PROTOCOL.md. */
#include "bisup_proto.h"

#include <string.h>

static uint16_t crc_update(uint16_t crc, uint8_t byte) { /* CRC-16/XMODEM: poly 0x1021, init 0 */
  crc ^= (uint16_t)((uint16_t)byte << 8);
  for (int bit = 0; bit < 8; ++bit) crc = (crc & 0x8000u) ? (uint16_t)((crc << 1) ^ 0x1021u) : (uint16_t)(crc << 1);
  return crc;
}

uint16_t bisup_proto_crc16(const uint8_t *data, size_t len) {
  uint16_t crc = 0;
  for (size_t i = 0; i < len; ++i) crc = crc_update(crc, data[i]);
  return crc;
}

bisup_proto_status bisup_proto_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len) {
  size_t i = 0, n = 0;
  while (i < len) {
    uint8_t code = in[i++];
    if (code == 0) return BISUP_PROTO_E_BAD_COBS;
    if ((size_t)(code - 1) > len - i) return BISUP_PROTO_E_BAD_COBS; /* block runs past the frame */
    for (uint8_t k = 1; k < code; ++k) {
      if (in[i] == 0) return BISUP_PROTO_E_BAD_COBS;
      if (n >= cap) return BISUP_PROTO_E_TOO_LONG;
      out[n++] = in[i++];
    }
    if (code < 0xFF && i < len) {
      if (n >= cap) return BISUP_PROTO_E_TOO_LONG;
      out[n++] = 0;
    }
  }
  *out_len = n;
  return BISUP_PROTO_OK;
}

static void put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v & 0xFFu);
  p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* A body is a small head (header and fixed fields, at most HEAD_MAX bytes) and, for INFER and
 * FEED, the elements, which stay in the caller's buffer. */
#define HEAD_MAX (BISUP_PROTO_HEADER_BYTES + 3u + BISUP_PROTO_HASH_BYTES + 4u + 1u + BISUP_PROTO_MAX_ID) /* HELLO's */

static size_t put_head(const bisup_proto_msg *m, uint8_t *p, const int8_t **data, uint32_t *count) {
  size_t n = BISUP_PROTO_HEADER_BYTES;
  p[0] = (uint8_t)BISUP_PROTO_VERSION;
  p[1] = m->type;
  put32(p + 2, m->seq);
  put32(p + 6, m->boot);
  *data = NULL;
  *count = 0;
  switch (m->type) {
    case BISUP_PROTO_HELLO:
      memcpy(p + n, m->u.hello.fw, 3);
      memcpy(p + n + 3, m->u.hello.hash, BISUP_PROTO_HASH_BYTES);
      put32(p + n + 3 + BISUP_PROTO_HASH_BYTES, m->u.hello.max_body);
      p[n + 7 + BISUP_PROTO_HASH_BYTES] = m->u.hello.id_len;
      memcpy(p + n + 8 + BISUP_PROTO_HASH_BYTES, m->u.hello.id, m->u.hello.id_len);
      return n + 8u + BISUP_PROTO_HASH_BYTES + m->u.hello.id_len;
    case BISUP_PROTO_INFER:
      put16(p + n, m->u.infer.label);
      p[n + 2] = (uint8_t)m->u.infer.confidence;
      p[n + 3] = m->u.infer.dtype;
      put32(p + n + 4, m->u.infer.count);
      *data = m->u.infer.data;
      *count = m->u.infer.count;
      return n + BISUP_PROTO_INFER_FIXED_BYTES;
    case BISUP_PROTO_SPLIT:
      p[n] = m->u.infer.stage;
      put16(p + n + 1, m->u.infer.label);
      p[n + 3] = (uint8_t)m->u.infer.confidence;
      p[n + 4] = m->u.infer.dtype;
      put32(p + n + 5, m->u.infer.count);
      *data = m->u.infer.data;
      *count = m->u.infer.count;
      return n + BISUP_PROTO_SPLIT_FIXED_BYTES;
    case BISUP_PROTO_ANSWER:
      put16(p + n, m->u.answer.label);
      put16(p + n + 2, m->u.answer.confidence_q16);
      p[n + 4] = m->u.answer.source;
      p[n + 5] = (uint8_t)((m->u.answer.rejected ? 1u : 0u) | (m->u.answer.load & 7u) << 1);
      return n + 6u;
    case BISUP_PROTO_ERROR:
      p[n] = m->u.error.code;
      put32(p + n + 1, m->u.error.detail);
      return n + 5u;
    case BISUP_PROTO_FEED:
      p[n] = m->u.feed.dtype;
      put32(p + n + 1, m->u.feed.count);
      *data = m->u.feed.data;
      *count = m->u.feed.count;
      return n + 5u;
    case BISUP_PROTO_REPORT:
      put16(p + n, m->u.report.label);
      p[n + 2] = m->u.report.source;
      p[n + 3] = m->u.report.rejected ? 1u : 0u;
      put16(p + n + 4, m->u.report.local_label);
      p[n + 6] = (uint8_t)m->u.report.local_confidence;
      put32(p + n + 7, m->u.report.latency_us);
      put32(p + n + 11, m->u.report.infer_cycles);
      return n + 15u;
    case BISUP_PROTO_STATS:
      put32(p + n, m->u.stats.inferences);
      put32(p + n + 4, m->u.stats.local);
      put32(p + n + 8, m->u.stats.relayed);
      if (!m->u.stats.scheduled) return n + 12u;
      put32(p + n + 12, m->u.stats.out_of_range);
      return n + 16u;
    case BISUP_PROTO_PROFILE:
      p[n] = m->u.profile.count;
      *data = (const int8_t *)m->u.profile.cycles_le; /* streamed like tensor data: no copy in the head */
      *count = 4u * m->u.profile.count;
      return n + 1u;
    default: return n;
  }
}

/* The head of m's body, its elements, and whether the whole body fits max_body. */
static bool body_parts(const bisup_proto_msg *m, uint32_t max_body, uint8_t head[HEAD_MAX], size_t *head_len,
                       const int8_t **data, uint32_t *count) {
  if (m->type == BISUP_PROTO_HELLO && (m->u.hello.id_len < 1 || m->u.hello.id_len > BISUP_PROTO_MAX_ID)) return false;
  *head_len = put_head(m, head, data, count);
  if (*count > 0 && *data == NULL) return false;
  return *count <= max_body && *head_len <= max_body - *count;
}

/* Streaming COBS: one pending block of at most 254 data bytes behind its code byte. */
typedef struct {
  bisup_proto_write_fn write;
  void *ctx;
  uint8_t block[255];
  uint8_t n;
  uint16_t crc;
} cobs_stream;

static void flush_block(cobs_stream *s) {
  s->block[0] = (uint8_t)(s->n + 1u);
  s->write(s->ctx, s->block, (size_t)s->n + 1u);
  s->n = 0;
}

static void stream_bytes(cobs_stream *s, const uint8_t *data, size_t len) {
  for (size_t i = 0; i < len; ++i) {
    if (data[i] == 0) {
      flush_block(s);
      continue;
    }
    s->block[1u + s->n++] = data[i];
    if (s->n == 254u) flush_block(s); /* code 0xFF: a full block, no implied zero */
  }
}

static void stream_body(cobs_stream *s, const uint8_t *data, size_t len) {
  for (size_t i = 0; i < len; ++i) s->crc = crc_update(s->crc, data[i]);
  stream_bytes(s, data, len);
}

bool bisup_proto_send_frame(const bisup_proto_msg *m, uint32_t max_body, bisup_proto_write_fn write, void *ctx) {
  uint8_t head[HEAD_MAX], trailer[BISUP_PROTO_CRC_BYTES];
  size_t head_len;
  const int8_t *data;
  uint32_t count;
  static const uint8_t delimiter = 0;
  if (!body_parts(m, max_body, head, &head_len, &data, &count)) return false;
  cobs_stream s;
  s.write = write;
  s.ctx = ctx;
  s.n = 0;
  s.crc = 0;
  stream_body(&s, head, head_len);
  stream_body(&s, (const uint8_t *)data, count);
  put16(trailer, s.crc);
  stream_bytes(&s, trailer, BISUP_PROTO_CRC_BYTES);
  flush_block(&s);
  write(ctx, &delimiter, 1);
  return true;
}

typedef struct {
  uint8_t *out;
  size_t cap, len;
  bool overflow;
} buffer_sink;

static void to_buffer(void *ctx, const uint8_t *data, size_t len) {
  buffer_sink *b = (buffer_sink *)ctx;
  if (b->overflow || len > b->cap - b->len) {
    b->overflow = true;
    return;
  }
  memcpy(b->out + b->len, data, len);
  b->len += len;
}

size_t bisup_proto_encode_frame(const bisup_proto_msg *m, uint8_t *out, size_t cap) {
  buffer_sink sink = {out, cap, 0, false};
  if (!bisup_proto_send_frame(m, BISUP_PROTO_MAX_BODY, to_buffer, &sink) || sink.overflow) return 0;
  return sink.len;
}

static bisup_proto_status decode_hello(const uint8_t *p, size_t n, bisup_proto_msg *m) {
  const size_t fixed = 3u + BISUP_PROTO_HASH_BYTES + 4u + 1u;
  if (n < fixed) return BISUP_PROTO_E_BAD_LENGTH;
  uint8_t id_len = p[fixed - 1];
  if (id_len < 1 || id_len > BISUP_PROTO_MAX_ID || n != fixed + id_len) return BISUP_PROTO_E_BAD_LENGTH;
  for (size_t i = 0; i < id_len; ++i) {
    if (p[fixed + i] > 0x7F) return BISUP_PROTO_E_BAD_LENGTH;
  }
  memcpy(m->u.hello.fw, p, 3);
  memcpy(m->u.hello.hash, p + 3, BISUP_PROTO_HASH_BYTES);
  m->u.hello.max_body = get32(p + 3 + BISUP_PROTO_HASH_BYTES);
  m->u.hello.id_len = id_len;
  memcpy(m->u.hello.id, p + fixed, id_len);
  m->u.hello.id[id_len] = '\0';
  return BISUP_PROTO_OK;
}

static bisup_proto_status decode_payload(const uint8_t *p, size_t n, bisup_proto_msg *m) {
  switch (m->type) {
    case BISUP_PROTO_HELLO: return decode_hello(p, n, m);
    case BISUP_PROTO_INFER:
      if (n < BISUP_PROTO_INFER_FIXED_BYTES || n - BISUP_PROTO_INFER_FIXED_BYTES != get32(p + 4)) {
        return BISUP_PROTO_E_BAD_LENGTH;
      }
      m->u.infer.label = get16(p);
      m->u.infer.confidence = (int8_t)p[2];
      m->u.infer.dtype = p[3];
      m->u.infer.count = get32(p + 4);
      m->u.infer.data = (const int8_t *)(p + BISUP_PROTO_INFER_FIXED_BYTES);
      m->u.infer.stage = 0;
      return BISUP_PROTO_OK;
    case BISUP_PROTO_SPLIT:
      if (n < BISUP_PROTO_SPLIT_FIXED_BYTES || n - BISUP_PROTO_SPLIT_FIXED_BYTES != get32(p + 5)) {
        return BISUP_PROTO_E_BAD_LENGTH;
      }
      m->u.infer.stage = p[0];
      m->u.infer.label = get16(p + 1);
      m->u.infer.confidence = (int8_t)p[3];
      m->u.infer.dtype = p[4];
      m->u.infer.count = get32(p + 5);
      m->u.infer.data = (const int8_t *)(p + BISUP_PROTO_SPLIT_FIXED_BYTES);
      return BISUP_PROTO_OK;
    case BISUP_PROTO_ANSWER:
      if (n != 6u || p[4] > BISUP_PROTO_SRC_FALLBACK) return BISUP_PROTO_E_BAD_LENGTH;
      m->u.answer.label = get16(p);
      m->u.answer.confidence_q16 = get16(p + 2);
      m->u.answer.source = p[4];
      m->u.answer.rejected = (uint8_t)(p[5] & 1u);
      m->u.answer.load = (uint8_t)((p[5] >> 1) & 7u);
      return BISUP_PROTO_OK;
    case BISUP_PROTO_ERROR:
      if (n != 5u || p[0] < BISUP_PROTO_E_BAD_CRC || p[0] > BISUP_PROTO_E_BUSY) {
        return BISUP_PROTO_E_BAD_LENGTH;
      }
      m->u.error.code = p[0];
      m->u.error.detail = get32(p + 1);
      return BISUP_PROTO_OK;
    case BISUP_PROTO_FEED:
      if (n < 5u || n - 5u != get32(p + 1)) return BISUP_PROTO_E_BAD_LENGTH;
      m->u.feed.dtype = p[0];
      m->u.feed.count = get32(p + 1);
      m->u.feed.data = (const int8_t *)(p + 5);
      return BISUP_PROTO_OK;
    case BISUP_PROTO_REPORT:
      if (n != 15u || p[2] > BISUP_PROTO_SRC_FALLBACK) return BISUP_PROTO_E_BAD_LENGTH;
      m->u.report.label = get16(p);
      m->u.report.source = p[2];
      m->u.report.rejected = (uint8_t)(p[3] & 1u);
      m->u.report.local_label = get16(p + 4);
      m->u.report.local_confidence = (int8_t)p[6];
      m->u.report.latency_us = get32(p + 7);
      m->u.report.infer_cycles = get32(p + 11);
      return BISUP_PROTO_OK;
    case BISUP_PROTO_STATS:
      if (n != 12u && n != 16u) return BISUP_PROTO_E_BAD_LENGTH;
      m->u.stats.inferences = get32(p);
      m->u.stats.local = get32(p + 4);
      m->u.stats.relayed = get32(p + 8);
      m->u.stats.scheduled = n == 16u;
      m->u.stats.out_of_range = n == 16u ? get32(p + 12) : 0u;
      return BISUP_PROTO_OK;
    case BISUP_PROTO_PROFILE:
      if (n < 1u || n != 1u + 4u * p[0]) return BISUP_PROTO_E_BAD_LENGTH;
      m->u.profile.count = p[0];
      m->u.profile.cycles_le = p + 1;
      return BISUP_PROTO_OK;
    case BISUP_PROTO_PING:
    case BISUP_PROTO_PONG: return n == 0 ? BISUP_PROTO_OK : BISUP_PROTO_E_BAD_LENGTH;
    default: return BISUP_PROTO_E_BAD_TYPE;
  }
}

bisup_proto_status bisup_proto_decode_body(const uint8_t *body, size_t len, bisup_proto_msg *m) {
  memset(m, 0, sizeof(*m));
  if (len < 6u) return BISUP_PROTO_E_BAD_LENGTH; /* version 1's header: seq at offset 2 in every version */
  if (len > BISUP_PROTO_MAX_BODY) return BISUP_PROTO_E_TOO_LONG;
  m->type = body[1];
  m->seq = get32(body + 2);
  if (body[0] != BISUP_PROTO_VERSION) return BISUP_PROTO_E_BAD_VERSION;
  if (len < BISUP_PROTO_HEADER_BYTES) return BISUP_PROTO_E_BAD_LENGTH;
  m->boot = get32(body + 6);
  return decode_payload(body + BISUP_PROTO_HEADER_BYTES, len - BISUP_PROTO_HEADER_BYTES, m);
}

bisup_proto_status bisup_proto_decode_frame(const uint8_t *frame, size_t len, uint8_t *scratch, size_t cap,
                                            bisup_proto_msg *m) {
  size_t n = 0;
  memset(m, 0, sizeof(*m));
  if (len > BISUP_PROTO_MAX_FRAME) return BISUP_PROTO_E_TOO_LONG;
  bisup_proto_status st = bisup_proto_cobs_decode(frame, len, scratch, cap, &n);
  if (st != BISUP_PROTO_OK) return st;
  if (n < BISUP_PROTO_CRC_BYTES) return BISUP_PROTO_E_BAD_LENGTH;
  if (bisup_proto_crc16(scratch, n - BISUP_PROTO_CRC_BYTES) != get16(scratch + n - BISUP_PROTO_CRC_BYTES)) {
    return BISUP_PROTO_E_BAD_CRC;
  }
  return bisup_proto_decode_body(scratch, n - BISUP_PROTO_CRC_BYTES, m);
}

void bisup_proto_reader_init(bisup_proto_reader *r) {
  r->len = 0;
  r->overflow = false;
}

bisup_proto_status bisup_proto_reader_push(bisup_proto_reader *r, uint8_t byte, bisup_proto_msg *m, bool *ready) {
  *ready = false;
  if (byte != 0) {
    if (r->overflow) return BISUP_PROTO_OK;
    if (r->len >= BISUP_PROTO_MAX_FRAME) {
      r->overflow = true; /* discard until the next delimiter */
      r->len = 0;
      return BISUP_PROTO_OK;
    }
    r->buf[r->len++] = byte;
    return BISUP_PROTO_OK;
  }
  bool overflow = r->overflow;
  size_t len = r->len;
  bisup_proto_reader_init(r);
  if (overflow) {
    *ready = true;
    memset(m, 0, sizeof(*m));
    return BISUP_PROTO_E_TOO_LONG;
  }
  if (len == 0) return BISUP_PROTO_OK; /* idle line */
  *ready = true;
  return bisup_proto_decode_frame(r->buf, len, r->buf, sizeof(r->buf), m); /* in place */
}

void bisup_proto_client_init(bisup_proto_client *c, const bisup_proto_client_config *cfg) {
  memset(c, 0, sizeof(*c));
  c->cfg = *cfg;
  bisup_proto_reader_init(&c->reader);
}

static void finish(bisup_proto_client *c, uint16_t label, uint16_t conf, uint8_t source, bool rejected,
                   uint8_t load) {
  c->load = load;
  c->label = label;
  c->confidence_q16 = conf;
  c->source = source;
  c->rejected = rejected;
  c->state = BISUP_PROTO_CLIENT_DONE;
}

static void send_request(bisup_proto_client *c) {
  /* the size was checked by bisup_proto_client_request */
  bisup_proto_send_frame(&c->request, BISUP_PROTO_MAX_BODY, c->cfg.write, c->cfg.ctx);
}

static bool start_request(bisup_proto_client *c, uint8_t type, uint8_t stage, uint32_t seq, const int8_t *data,
                          uint32_t count, uint16_t local_label, int8_t local_confidence) {
  uint32_t fixed = type == BISUP_PROTO_SPLIT ? BISUP_PROTO_SPLIT_FIXED_BYTES : BISUP_PROTO_INFER_FIXED_BYTES;
  if (c->state == BISUP_PROTO_CLIENT_WAITING || bisup_proto_client_holding(c)) return false;
  if (count > BISUP_PROTO_MAX_BODY - BISUP_PROTO_HEADER_BYTES - fixed) return false;
  memset(&c->request, 0, sizeof(c->request));
  c->request.type = type;
  c->request.seq = seq;
  c->request.boot = c->cfg.boot_id;
  c->request.u.infer.label = local_label;
  c->request.u.infer.confidence = local_confidence;
  c->request.u.infer.dtype = BISUP_PROTO_DTYPE_INT8;
  c->request.u.infer.count = count;
  c->request.u.infer.data = data;
  c->request.u.infer.stage = stage;
  c->retries_left = c->cfg.max_retries;
  c->state = BISUP_PROTO_CLIENT_WAITING;
  c->deadline = c->cfg.now_ms(c->cfg.ctx) + c->cfg.timeout_ms;
  send_request(c);
  return true;
}

bool bisup_proto_client_request(bisup_proto_client *c, uint32_t seq, const int8_t *input, uint32_t count,
                                uint16_t local_label, int8_t local_confidence) {
  return start_request(c, BISUP_PROTO_INFER, 0, seq, input, count, local_label, local_confidence);
}

bool bisup_proto_client_request_split(bisup_proto_client *c, uint32_t seq, uint8_t stage, const int8_t *activation,
                                      uint32_t count, uint16_t local_label, int8_t local_confidence) {
  return stage > 0 && start_request(c, BISUP_PROTO_SPLIT, stage, seq, activation, count, local_label, local_confidence);
}

static void on_message(bisup_proto_client *c, const bisup_proto_msg *m) {
  /* stale (another request, or an answer addressed to a previous boot) or unrelated */
  if (c->state != BISUP_PROTO_CLIENT_WAITING || m->seq != c->request.seq || m->boot != c->request.boot) return;
  if (m->type == BISUP_PROTO_ANSWER) {
    finish(c, m->u.answer.label, m->u.answer.confidence_q16, m->u.answer.source, m->u.answer.rejected != 0,
           m->u.answer.load);
  } else if (m->type == BISUP_PROTO_ERROR) {
    if (m->u.error.code == BISUP_PROTO_E_BUSY) {
      uint32_t hold = m->u.error.detail < BISUP_PROTO_MAX_HOLD_MS ? m->u.error.detail : BISUP_PROTO_MAX_HOLD_MS;
      c->busy++;
      c->holding = true;
      c->hold_until = c->cfg.now_ms(c->cfg.ctx) + hold;
    }
    finish(c, c->request.u.infer.label, 0, BISUP_PROTO_SRC_FALLBACK, false, 0);
  }
}

bool bisup_proto_client_holding(bisup_proto_client *c) {
  if (c->holding && (int32_t)(c->cfg.now_ms(c->cfg.ctx) - c->hold_until) >= 0) c->holding = false; /* wrap-safe */
  return c->holding;
}

void bisup_proto_client_feed(bisup_proto_client *c, const uint8_t *data, size_t len) {
  bisup_proto_msg m;
  bool ready;
  for (size_t i = 0; i < len; ++i) {
    bisup_proto_status st = bisup_proto_reader_push(&c->reader, data[i], &m, &ready);
    if (!ready) continue;
    if (st == BISUP_PROTO_OK) {
      on_message(c, &m);
    } else {
      c->bad_frames++;
    }
  }
}

bisup_proto_client_state bisup_proto_client_poll(bisup_proto_client *c) {
  if (c->state != BISUP_PROTO_CLIENT_WAITING) return c->state;
  uint32_t now = c->cfg.now_ms(c->cfg.ctx);
  if ((int32_t)(now - c->deadline) < 0) return c->state; /* wrap-safe comparison */
  if (c->retries_left > 0) {
    c->retries_left--;
    c->resends++;
    c->deadline = now + c->cfg.timeout_ms;
    send_request(c);
  } else {
    finish(c, c->request.u.infer.label, 0, BISUP_PROTO_SRC_FALLBACK, false, 0);
  }
  return c->state;
}

void bisup_proto_client_reset(bisup_proto_client *c) { c->state = BISUP_PROTO_CLIENT_IDLE; }
