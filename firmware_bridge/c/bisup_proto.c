/* bisup device library: see bisup_proto.h and firmware_bridge/PROTOCOL.md. */
#include "bisup_proto.h"

#include <string.h>

uint16_t bp_crc16(const uint8_t *data, size_t len) {
  uint16_t crc = 0; /* CRC-16/XMODEM: poly 0x1021, init 0, no reflection */
  for (size_t i = 0; i < len; ++i) {
    crc ^= (uint16_t)((uint16_t)data[i] << 8);
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc & 0x8000u) ? (uint16_t)((crc << 1) ^ 0x1021u) : (uint16_t)(crc << 1);
    }
  }
  return crc;
}

size_t bp_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap) {
  size_t code_at = 0, pos = 1;
  uint8_t code = 1;
  if (cap == 0) return 0;
  for (size_t i = 0; i < len; ++i) {
    if (in[i] == 0) {
      out[code_at] = code;
      code_at = pos++;
      code = 1;
    } else {
      if (pos >= cap) return 0;
      out[pos++] = in[i];
      if (++code == 0xFF) {
        out[code_at] = code;
        code_at = pos++;
        code = 1;
      }
    }
    if (pos > cap) return 0;
  }
  if (code_at >= cap) return 0;
  out[code_at] = code;
  return pos;
}

bp_status bp_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len) {
  size_t i = 0, n = 0;
  while (i < len) {
    uint8_t code = in[i++];
    if (code == 0) return BP_E_BAD_COBS;
    if ((size_t)(code - 1) > len - i) return BP_E_BAD_COBS; /* block runs past the frame */
    for (uint8_t k = 1; k < code; ++k) {
      if (in[i] == 0) return BP_E_BAD_COBS;
      if (n >= cap) return BP_E_TOO_LONG;
      out[n++] = in[i++];
    }
    if (code < 0xFF && i < len) {
      if (n >= cap) return BP_E_TOO_LONG;
      out[n++] = 0;
    }
  }
  *out_len = n;
  return BP_OK;
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

static size_t payload_size(const bp_msg *m) {
  switch (m->type) {
    case BP_HELLO: return 3u + BP_HASH_BYTES + 1u + m->u.hello.id_len;
    case BP_INFER: return 6u + m->u.infer.count;
    case BP_ANSWER: return 6u;
    case BP_ERROR: return 3u;
    case BP_FEED: return 3u + m->u.feed.count;
    case BP_REPORT: return 11u;
    default: return 0u;
  }
}

static void put_payload(const bp_msg *m, uint8_t *p) {
  switch (m->type) {
    case BP_HELLO:
      memcpy(p, m->u.hello.fw, 3);
      memcpy(p + 3, m->u.hello.hash, BP_HASH_BYTES);
      p[3 + BP_HASH_BYTES] = m->u.hello.id_len;
      memcpy(p + 4 + BP_HASH_BYTES, m->u.hello.id, m->u.hello.id_len);
      break;
    case BP_INFER:
      put16(p, m->u.infer.label);
      p[2] = (uint8_t)m->u.infer.confidence;
      p[3] = m->u.infer.dtype;
      put16(p + 4, m->u.infer.count);
      if (m->u.infer.count) memcpy(p + 6, m->u.infer.data, m->u.infer.count);
      break;
    case BP_ANSWER:
      put16(p, m->u.answer.label);
      put16(p + 2, m->u.answer.confidence_q16);
      p[4] = m->u.answer.source;
      p[5] = m->u.answer.rejected ? 1u : 0u;
      break;
    case BP_ERROR:
      p[0] = m->u.error.code;
      put16(p + 1, m->u.error.detail);
      break;
    case BP_FEED:
      p[0] = m->u.feed.dtype;
      put16(p + 1, m->u.feed.count);
      if (m->u.feed.count) memcpy(p + 3, m->u.feed.data, m->u.feed.count);
      break;
    case BP_REPORT:
      put16(p, m->u.report.label);
      p[2] = m->u.report.source;
      p[3] = m->u.report.rejected ? 1u : 0u;
      put16(p + 4, m->u.report.local_label);
      p[6] = (uint8_t)m->u.report.local_confidence;
      put32(p + 7, m->u.report.latency_us);
      break;
    default: break;
  }
}

size_t bp_encode_body(const bp_msg *m, uint8_t *out, size_t cap) {
  if (m->type == BP_HELLO && (m->u.hello.id_len < 1 || m->u.hello.id_len > BP_MAX_ID)) return 0;
  size_t total = BP_HEADER_BYTES + payload_size(m);
  if (total > BP_MAX_BODY || total > cap) return 0;
  out[0] = (uint8_t)BP_VERSION;
  out[1] = m->type;
  put32(out + 2, m->seq);
  put_payload(m, out + BP_HEADER_BYTES);
  return total;
}

static bp_status decode_hello(const uint8_t *p, size_t n, bp_msg *m) {
  const size_t fixed = 3u + BP_HASH_BYTES + 1u;
  if (n < fixed) return BP_E_BAD_LENGTH;
  uint8_t id_len = p[fixed - 1];
  if (id_len < 1 || id_len > BP_MAX_ID || n != fixed + id_len) return BP_E_BAD_LENGTH;
  for (size_t i = 0; i < id_len; ++i) {
    if (p[fixed + i] > 0x7F) return BP_E_BAD_LENGTH;
  }
  memcpy(m->u.hello.fw, p, 3);
  memcpy(m->u.hello.hash, p + 3, BP_HASH_BYTES);
  m->u.hello.id_len = id_len;
  memcpy(m->u.hello.id, p + fixed, id_len);
  m->u.hello.id[id_len] = '\0';
  return BP_OK;
}

static bp_status decode_payload(const uint8_t *p, size_t n, bp_msg *m) {
  switch (m->type) {
    case BP_HELLO: return decode_hello(p, n, m);
    case BP_INFER:
      if (n < 6u || n != 6u + get16(p + 4)) return BP_E_BAD_LENGTH;
      m->u.infer.label = get16(p);
      m->u.infer.confidence = (int8_t)p[2];
      m->u.infer.dtype = p[3];
      m->u.infer.count = get16(p + 4);
      m->u.infer.data = (const int8_t *)(p + 6);
      return BP_OK;
    case BP_ANSWER:
      if (n != 6u || p[4] > BP_SRC_FALLBACK) return BP_E_BAD_LENGTH;
      m->u.answer.label = get16(p);
      m->u.answer.confidence_q16 = get16(p + 2);
      m->u.answer.source = p[4];
      m->u.answer.rejected = (uint8_t)(p[5] & 1u);
      return BP_OK;
    case BP_ERROR:
      if (n != 3u || p[0] < BP_E_BAD_CRC || p[0] > BP_E_REMOTE_UNAVAILABLE) return BP_E_BAD_LENGTH;
      m->u.error.code = p[0];
      m->u.error.detail = get16(p + 1);
      return BP_OK;
    case BP_FEED:
      if (n < 3u || n != 3u + get16(p + 1)) return BP_E_BAD_LENGTH;
      m->u.feed.dtype = p[0];
      m->u.feed.count = get16(p + 1);
      m->u.feed.data = (const int8_t *)(p + 3);
      return BP_OK;
    case BP_REPORT:
      if (n != 11u || p[2] > BP_SRC_FALLBACK) return BP_E_BAD_LENGTH;
      m->u.report.label = get16(p);
      m->u.report.source = p[2];
      m->u.report.rejected = (uint8_t)(p[3] & 1u);
      m->u.report.local_label = get16(p + 4);
      m->u.report.local_confidence = (int8_t)p[6];
      m->u.report.latency_us = get32(p + 7);
      return BP_OK;
    case BP_PING:
    case BP_PONG: return n == 0 ? BP_OK : BP_E_BAD_LENGTH;
    default: return BP_E_BAD_TYPE;
  }
}

bp_status bp_decode_body(const uint8_t *body, size_t len, bp_msg *m) {
  memset(m, 0, sizeof(*m));
  if (len < BP_HEADER_BYTES) return BP_E_BAD_LENGTH;
  if (len > BP_MAX_BODY) return BP_E_TOO_LONG;
  m->type = body[1];
  m->seq = get32(body + 2);
  if (body[0] != BP_VERSION) return BP_E_BAD_VERSION;
  return decode_payload(body + BP_HEADER_BYTES, len - BP_HEADER_BYTES, m);
}

size_t bp_encode_frame(const bp_msg *m, uint8_t *out, size_t cap) {
  uint8_t raw[BP_MAX_BODY + BP_CRC_BYTES];
  size_t n = bp_encode_body(m, raw, BP_MAX_BODY);
  if (n == 0) return 0;
  put16(raw + n, bp_crc16(raw, n));
  if (cap < 1) return 0;
  size_t enc = bp_cobs_encode(raw, n + BP_CRC_BYTES, out, cap - 1);
  if (enc == 0) return 0;
  out[enc] = 0;
  return enc + 1;
}

bp_status bp_decode_frame(const uint8_t *frame, size_t len, uint8_t *scratch, size_t cap, bp_msg *m) {
  size_t n = 0;
  memset(m, 0, sizeof(*m));
  if (len > BP_MAX_FRAME) return BP_E_TOO_LONG;
  bp_status st = bp_cobs_decode(frame, len, scratch, cap, &n);
  if (st != BP_OK) return st;
  if (n < BP_CRC_BYTES) return BP_E_BAD_LENGTH;
  if (bp_crc16(scratch, n - BP_CRC_BYTES) != get16(scratch + n - BP_CRC_BYTES)) return BP_E_BAD_CRC;
  return bp_decode_body(scratch, n - BP_CRC_BYTES, m);
}

void bp_reader_init(bp_reader *r) {
  r->len = 0;
  r->overflow = false;
}

bp_status bp_reader_push(bp_reader *r, uint8_t byte, bp_msg *m, bool *ready) {
  *ready = false;
  if (byte != 0) {
    if (r->overflow) return BP_OK;
    if (r->len >= BP_MAX_FRAME) {
      r->overflow = true; /* discard until the next delimiter */
      r->len = 0;
      return BP_OK;
    }
    r->buf[r->len++] = byte;
    return BP_OK;
  }
  bool overflow = r->overflow;
  size_t len = r->len;
  bp_reader_init(r);
  if (overflow) {
    *ready = true;
    memset(m, 0, sizeof(*m));
    return BP_E_TOO_LONG;
  }
  if (len == 0) return BP_OK; /* idle line */
  *ready = true;
  return bp_decode_frame(r->buf, len, r->body, sizeof(r->body), m);
}

void bp_client_init(bp_client *c, const bp_client_config *cfg) {
  memset(c, 0, sizeof(*c));
  c->cfg = *cfg;
  bp_reader_init(&c->reader);
}

static void finish(bp_client *c, uint16_t label, uint16_t conf, uint8_t source, bool rejected) {
  c->label = label;
  c->confidence_q16 = conf;
  c->source = source;
  c->rejected = rejected;
  c->state = BP_CLIENT_DONE;
}

bool bp_client_request(bp_client *c, uint32_t seq, const int8_t *input, uint16_t count, uint16_t local_label,
                       int8_t local_confidence) {
  if (c->state == BP_CLIENT_WAITING) return false;
  bp_msg m;
  memset(&m, 0, sizeof(m));
  m.type = BP_INFER;
  m.seq = seq;
  m.u.infer.label = local_label;
  m.u.infer.confidence = local_confidence;
  m.u.infer.dtype = BP_DTYPE_INT8;
  m.u.infer.count = count;
  m.u.infer.data = input;
  c->frame_len = bp_encode_frame(&m, c->frame, sizeof(c->frame));
  if (c->frame_len == 0) return false;
  c->seq = seq;
  c->local_label = local_label;
  c->retries_left = c->cfg.max_retries;
  c->state = BP_CLIENT_WAITING;
  c->deadline = c->cfg.now_ms(c->cfg.ctx) + c->cfg.timeout_ms;
  c->cfg.write(c->cfg.ctx, c->frame, c->frame_len);
  return true;
}

static void on_message(bp_client *c, const bp_msg *m) {
  if (c->state != BP_CLIENT_WAITING || m->seq != c->seq) return; /* stale or unrelated */
  if (m->type == BP_ANSWER) {
    finish(c, m->u.answer.label, m->u.answer.confidence_q16, m->u.answer.source, m->u.answer.rejected != 0);
  } else if (m->type == BP_ERROR) {
    finish(c, c->local_label, 0, BP_SRC_FALLBACK, false);
  }
}

void bp_client_feed(bp_client *c, const uint8_t *data, size_t len) {
  bp_msg m;
  bool ready;
  for (size_t i = 0; i < len; ++i) {
    bp_status st = bp_reader_push(&c->reader, data[i], &m, &ready);
    if (!ready) continue;
    if (st == BP_OK) {
      on_message(c, &m);
    } else {
      c->bad_frames++;
    }
  }
}

bp_client_state bp_client_poll(bp_client *c) {
  if (c->state != BP_CLIENT_WAITING) return c->state;
  uint32_t now = c->cfg.now_ms(c->cfg.ctx);
  if ((int32_t)(now - c->deadline) < 0) return c->state; /* wrap-safe comparison */
  if (c->retries_left > 0) {
    c->retries_left--;
    c->resends++;
    c->deadline = now + c->cfg.timeout_ms;
    c->cfg.write(c->cfg.ctx, c->frame, c->frame_len);
  } else {
    finish(c, c->local_label, 0, BP_SRC_FALLBACK, false);
  }
  return c->state;
}

void bp_client_reset(bp_client *c) { c->state = BP_CLIENT_IDLE; }
