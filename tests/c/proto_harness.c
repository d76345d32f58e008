/* Host test harness for the C device library; driven by tests/test_c_protocol.py.
 *
 *   proto_harness vectors GOLDEN      decode every golden frame, print canonical lines, re-encode
 *   proto_harness fuzz GOLDEN N SEED  N mutated frames through the stream reader, then a resync check
 *   proto_harness client              the request state machine against a scripted host
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bisup_app.h"

#define LINE_MAX_BYTES (4 * BISUP_PROTO_MAX_FRAME + 4096)
#define MAX_VECTORS 64

typedef struct {
  char name[64];
  uint8_t frame[BISUP_PROTO_MAX_FRAME + 64];
  size_t len;
} vector;

static vector vectors[MAX_VECTORS];
static size_t vector_count;

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

static void load(const char *path) {
  static char line[LINE_MAX_BYTES];
  FILE *f = fopen(path, "r");
  if (!f) {
    perror(path);
    exit(2);
  }
  while (fgets(line, sizeof(line), f) && vector_count < MAX_VECTORS) {
    if (line[0] == '#' || line[0] == '\n') continue;
    vector *v = &vectors[vector_count++];
    char *name = strtok(line, "\t"), *hex = strtok(NULL, "\t"), *expected = strtok(NULL, "\n");
    (void)expected; /* the test compares what we print with it */
    snprintf(v->name, sizeof(v->name), "%s", name);
    for (size_t i = 0; hex[2 * i] && hex[2 * i + 1] && v->len < sizeof(v->frame); ++i) {
      v->frame[v->len++] = (uint8_t)(hexval(hex[2 * i]) * 16 + hexval(hex[2 * i + 1]));
    }
  }
  fclose(f);
}

static void put_hex(const uint8_t *data, size_t n) {
  for (size_t i = 0; i < n; ++i) printf("%02x", data[i]);
}

static void describe(const bisup_proto_msg *m) {
  switch (m->type) {
    case BISUP_PROTO_HELLO:
      printf("HELLO seq=%lu boot=%lu fw=%u.%u.%u hash=", (unsigned long)m->seq, (unsigned long)m->boot,
             m->u.hello.fw[0], m->u.hello.fw[1], m->u.hello.fw[2]);
      put_hex(m->u.hello.hash, BISUP_PROTO_HASH_BYTES);
      printf(" max_body=%lu id=%s", (unsigned long)m->u.hello.max_body, m->u.hello.id);
      break;
    case BISUP_PROTO_INFER:
      printf("INFER seq=%lu boot=%lu label=%u conf=%d dtype=%u n=%lu data=", (unsigned long)m->seq,
             (unsigned long)m->boot, m->u.infer.label, m->u.infer.confidence, m->u.infer.dtype,
             (unsigned long)m->u.infer.count);
      put_hex((const uint8_t *)m->u.infer.data, m->u.infer.count);
      break;
    case BISUP_PROTO_SPLIT:
      printf("SPLIT seq=%lu boot=%lu stage=%u label=%u conf=%d dtype=%u n=%lu data=", (unsigned long)m->seq,
             (unsigned long)m->boot, m->u.infer.stage, m->u.infer.label, m->u.infer.confidence, m->u.infer.dtype,
             (unsigned long)m->u.infer.count);
      put_hex((const uint8_t *)m->u.infer.data, m->u.infer.count);
      break;
    case BISUP_PROTO_ANSWER:
      printf("ANSWER seq=%lu boot=%lu label=%u conf=%u source=%u rejected=%u", (unsigned long)m->seq,
             (unsigned long)m->boot, m->u.answer.label, m->u.answer.confidence_q16, m->u.answer.source,
             m->u.answer.rejected);
      if (m->u.answer.load) printf(" load=%u", m->u.answer.load);
      break;
    case BISUP_PROTO_ERROR:
      printf("ERROR seq=%lu boot=%lu code=%u detail=%lu", (unsigned long)m->seq, (unsigned long)m->boot,
             m->u.error.code, (unsigned long)m->u.error.detail);
      break;
    case BISUP_PROTO_FEED:
      printf("FEED seq=%lu boot=%lu dtype=%u n=%lu data=", (unsigned long)m->seq, (unsigned long)m->boot,
             m->u.feed.dtype, (unsigned long)m->u.feed.count);
      put_hex((const uint8_t *)m->u.feed.data, m->u.feed.count);
      break;
    case BISUP_PROTO_STATS:
      printf("STATS seq=%lu boot=%lu inferences=%lu local=%lu relayed=%lu", (unsigned long)m->seq,
             (unsigned long)m->boot, (unsigned long)m->u.stats.inferences, (unsigned long)m->u.stats.local,
             (unsigned long)m->u.stats.relayed);
      if (m->u.stats.scheduled) printf(" out_of_range=%lu", (unsigned long)m->u.stats.out_of_range);
      break;
    case BISUP_PROTO_REPORT:
      printf("REPORT seq=%lu boot=%lu label=%u source=%u rejected=%u local_label=%u conf=%d latency_us=%lu "
             "infer_cycles=%lu",
             (unsigned long)m->seq, (unsigned long)m->boot, m->u.report.label, m->u.report.source, m->u.report.rejected,
             m->u.report.local_label, m->u.report.local_confidence, (unsigned long)m->u.report.latency_us,
             (unsigned long)m->u.report.infer_cycles);
      break;
    case BISUP_PROTO_PROFILE:
      printf("PROFILE seq=%lu boot=%lu n=%u cycles=", (unsigned long)m->seq, (unsigned long)m->boot,
             m->u.profile.count);
      for (unsigned i = 0; i < m->u.profile.count; ++i) {
        const uint8_t *v = m->u.profile.cycles_le + 4u * i;
        printf("%s%lu", i ? "," : "", (unsigned long)v[0] | ((unsigned long)v[1] << 8) | ((unsigned long)v[2] << 16) |
                                          ((unsigned long)v[3] << 24));
      }
      break;
    default:
      printf("%s seq=%lu boot=%lu", m->type == BISUP_PROTO_PING ? "PING" : "PONG", (unsigned long)m->seq,
             (unsigned long)m->boot);
  }
}

static bisup_proto_reader reader;

static int run_vectors(void) {
  static uint8_t again[BISUP_PROTO_MAX_FRAME + 1];
  for (size_t i = 0; i < vector_count; ++i) {
    const vector *v = &vectors[i];
    bisup_proto_msg m;
    bool ready = false;
    bisup_proto_status st = BISUP_PROTO_OK;
    bisup_proto_reader_init(&reader);
    for (size_t k = 0; k < v->len && !ready; ++k) st = bisup_proto_reader_push(&reader, v->frame[k], &m, &ready);
    printf("%s\t", v->name);
    if (!ready) {
      printf("NO FRAME\n");
      continue;
    }
    if (st != BISUP_PROTO_OK) {
      printf("INVALID code=%d seq=%lu\n", (int)st, (unsigned long)m.seq);
      continue;
    }
    describe(&m);
    size_t n = bisup_proto_encode_frame(&m, again, sizeof(again));
    printf("\t%s\n", (n == v->len && memcmp(again, v->frame, n) == 0) ? "REENCODE-OK" : "REENCODE-DIFFERS");
  }
  return 0;
}

static uint32_t rng_state;

static uint32_t next_random(void) { /* xorshift32 */
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 17;
  rng_state ^= rng_state << 5;
  return rng_state;
}

static size_t mutate(uint8_t *buf, size_t len, size_t cap) {
  int ops = 1 + (int)(next_random() % 4);
  for (int k = 0; k < ops && len > 0; ++k) {
    size_t at = next_random() % len;
    switch (next_random() % 5) {
      case 0: buf[at] ^= (uint8_t)(1u << (next_random() % 8)); break;     /* flip a bit */
      case 1: buf[at] = (uint8_t)next_random(); break;                    /* replace a byte */
      case 2: memmove(buf + at, buf + at + 1, len - at - 1); len--; break; /* drop a byte */
      case 3:                                                               /* insert a byte */
        if (len < cap) {
          memmove(buf + at + 1, buf + at, len - at);
          buf[at] = (uint8_t)next_random();
          len++;
        }
        break;
      default: len = at + 1; /* truncate */
    }
  }
  return len;
}

static int run_fuzz(unsigned long iterations, uint32_t seed) {
  static uint8_t buf[BISUP_PROTO_MAX_FRAME + 256];
  unsigned long outcomes[BISUP_PROTO_E_NO_ROOM + 1] = {0};
  rng_state = seed ? seed : 1u;
  bisup_proto_reader_init(&reader);
  for (unsigned long i = 0; i < iterations; ++i) {
    const vector *v = &vectors[next_random() % vector_count];
    size_t len = v->len < sizeof(buf) ? v->len : sizeof(buf);
    memcpy(buf, v->frame, len);
    len = mutate(buf, len, sizeof(buf));
    for (size_t k = 0; k < len; ++k) {
      bisup_proto_msg m;
      bool ready;
      bisup_proto_status st = bisup_proto_reader_push(&reader, buf[k], &m, &ready);
      if (ready) outcomes[st]++;
    }
  }
  /* after all that noise, one delimiter and a clean frame must decode */
  bisup_proto_msg m;
  bool ready = false;
  bisup_proto_status st = BISUP_PROTO_OK;
  bisup_proto_reader_push(&reader, 0, &m, &ready);
  for (size_t k = 0; k < vectors[0].len; ++k) st = bisup_proto_reader_push(&reader, vectors[0].frame[k], &m, &ready);
  printf("fuzz iterations=%lu ok=%lu bad_crc=%lu bad_cobs=%lu too_long=%lu bad_length=%lu other=%lu resync=%s\n",
         iterations, outcomes[BISUP_PROTO_OK], outcomes[BISUP_PROTO_E_BAD_CRC], outcomes[BISUP_PROTO_E_BAD_COBS],
         outcomes[BISUP_PROTO_E_TOO_LONG],
         outcomes[BISUP_PROTO_E_BAD_LENGTH], outcomes[BISUP_PROTO_E_BAD_VERSION] + outcomes[BISUP_PROTO_E_BAD_TYPE],
         (ready && st == BISUP_PROTO_OK && m.type == BISUP_PROTO_HELLO) ? "ok" : "FAILED");
  return 0;
}

/* --- state machine against a scripted host --- */
static uint32_t clock_ms;
static uint8_t sent[4][BISUP_PROTO_MAX_FRAME + 1];
static size_t sent_len[4], sent_count;

static size_t bytes_sent;

/* The link: collects each frame (the streaming encoder writes it in blocks) up to its 0x00. */
static void capture(void *ctx, const uint8_t *data, size_t len) {
  (void)ctx;
  bytes_sent += len;
  if (sent_count < 4) {
    size_t room = sizeof(sent[0]) - sent_len[sent_count];
    memcpy(sent[sent_count] + sent_len[sent_count], data, len < room ? len : room);
    sent_len[sent_count] += len < room ? len : room;
  }
  if (len > 0 && data[len - 1] == 0) sent_count++;
}

static uint32_t now(void *ctx) {
  (void)ctx;
  return clock_ms;
}

static int failures;
#define CHECK(cond)                                           \
  do {                                                        \
    if (!(cond)) {                                            \
      printf("client FAILED line %d: %s\n", __LINE__, #cond); \
      failures++;                                             \
    }                                                         \
  } while (0)

static void host_says(bisup_proto_client *c, const bisup_proto_msg *m) {
  uint8_t frame[BISUP_PROTO_MAX_FRAME + 1];
  size_t n = bisup_proto_encode_frame(m, frame, sizeof(frame));
  bisup_proto_client_feed(c, frame, n);
}

#define BOOT 0xB0075EEDu

static bisup_proto_msg answer(uint32_t seq, uint16_t label) {
  bisup_proto_msg m;
  memset(&m, 0, sizeof(m));
  m.type = BISUP_PROTO_ANSWER;
  m.seq = seq;
  m.boot = BOOT;
  m.u.answer.label = label;
  m.u.answer.confidence_q16 = 60000;
  m.u.answer.source = BISUP_PROTO_SRC_REMOTE;
  return m;
}

static bool silent_link(void *ctx, uint8_t *byte) {
  (void)ctx;
  (void)byte;
  clock_ms += 10; /* time passes while nobody answers */
  return false;
}

static int run_client(void) {
  static bisup_proto_client c;
  const int8_t input[64] = {1, -2, 3};
  bisup_proto_client_config cfg = {capture, now, NULL, 100, 2, BOOT};
  /* 1: no answer -> two resends with the same bytes, then the local fallback */
  bisup_proto_client_init(&c, &cfg);
  clock_ms = 1000;
  sent_count = 0;
  memset(sent_len, 0, sizeof(sent_len));
  CHECK(bisup_proto_client_request(&c, 41, input, 64, 7, -30));
  CHECK(!bisup_proto_client_request(&c, 42, input, 64, 7, -30)); /* one request at a time */
  clock_ms += 99;
  CHECK(bisup_proto_client_poll(&c) == BISUP_PROTO_CLIENT_WAITING && sent_count == 1);
  clock_ms += 1;
  CHECK(bisup_proto_client_poll(&c) == BISUP_PROTO_CLIENT_WAITING && sent_count == 2);
  CHECK(sent_len[1] == sent_len[0] && memcmp(sent[1], sent[0], sent_len[0]) == 0);
  clock_ms += 100;
  bisup_proto_client_poll(&c);
  clock_ms += 100;
  CHECK(bisup_proto_client_poll(&c) == BISUP_PROTO_CLIENT_DONE && sent_count == 3 && c.resends == 2);
  CHECK(c.source == BISUP_PROTO_SRC_FALLBACK && c.label == 7 && !c.rejected);
  /* 2: noise and a stale answer are ignored, the matching answer ends the request */
  bisup_proto_client_reset(&c);
  CHECK(bisup_proto_client_request(&c, 43, input, 64, 7, -30));
  const uint8_t noise[] = {0x13, 0x37, 0x00, 0xFF, 0xFF, 0x00};
  bisup_proto_client_feed(&c, noise, sizeof(noise));
  bisup_proto_msg stale = answer(41, 1), fresh = answer(43, 5), other_boot = answer(43, 6);
  other_boot.boot = BOOT + 1u; /* the same seq, answered to a previous boot: never taken */
  host_says(&c, &stale);
  host_says(&c, &other_boot);
  CHECK(c.state == BISUP_PROTO_CLIENT_WAITING);
  host_says(&c, &fresh);
  CHECK(bisup_proto_client_poll(&c) == BISUP_PROTO_CLIENT_DONE && c.source == BISUP_PROTO_SRC_REMOTE && c.label == 5);
  CHECK(c.bad_frames == 2);
  /* 3: an ERROR for the pending request ends in the local fallback */
  bisup_proto_client_reset(&c);
  CHECK(bisup_proto_client_request(&c, 44, input, 64, 9, -1));
  bisup_proto_msg error;
  memset(&error, 0, sizeof(error));
  error.type = BISUP_PROTO_ERROR;
  error.seq = 44;
  error.boot = BOOT;
  error.u.error.code = BISUP_PROTO_E_BAD_TENSOR;
  error.u.error.detail = 64;
  host_says(&c, &error);
  CHECK(c.state == BISUP_PROTO_CLIENT_DONE && c.source == BISUP_PROTO_SRC_FALLBACK && c.label == 9);
  CHECK(c.busy == 0 && !bisup_proto_client_holding(&c)); /* only BUSY asks for a hold */
  /* 3b: BUSY ends the request at once (no resend), and nothing is relayed until its hold has passed */
  bisup_proto_client_reset(&c);
  sent_count = 0;
  uint32_t resends = c.resends;
  CHECK(bisup_proto_client_request(&c, 45, input, 64, 8, -2));
  error.seq = 45;
  error.u.error.code = BISUP_PROTO_E_BUSY;
  error.u.error.detail = 300;
  host_says(&c, &error);
  CHECK(c.state == BISUP_PROTO_CLIENT_DONE && c.source == BISUP_PROTO_SRC_FALLBACK && c.label == 8 && c.busy == 1);
  clock_ms += 1000; /* past the request's deadlines: a finished request is never resent */
  CHECK(bisup_proto_client_poll(&c) == BISUP_PROTO_CLIENT_DONE && sent_count == 1 && c.resends == resends);
  clock_ms -= 1000 - 299;
  bisup_proto_client_reset(&c);
  CHECK(bisup_proto_client_holding(&c) && !bisup_proto_client_request(&c, 46, input, 64, 8, -2) && sent_count == 1);
  clock_ms += 1;
  CHECK(!bisup_proto_client_holding(&c) && bisup_proto_client_request(&c, 46, input, 64, 8, -2) && sent_count == 2);
  error.seq = 46;
  error.u.error.detail = 0xFFFFFFFFu; /* a host cannot silence a device for longer than BISUP_PROTO_MAX_HOLD_MS */
  host_says(&c, &error);
  clock_ms += BISUP_PROTO_MAX_HOLD_MS - 1u;
  CHECK(c.busy == 2 && bisup_proto_client_holding(&c));
  clock_ms += 1;
  CHECK(!bisup_proto_client_holding(&c));
  /* 4: the decision step, and sequence numbers that wrap */
  CHECK(bisup_proto_trusted(-20, -20) && !bisup_proto_trusted(-21, -20) && !bisup_proto_trusted(127, 128) &&
        bisup_proto_trusted(-128, -128));
  bisup_proto_client_reset(&c);
  clock_ms = 0xFFFFFFF0u;
  CHECK(bisup_proto_client_request(&c, 0xFFFFFFFFu, input, 64, 1, 0));
  clock_ms += 50; /* wraps past zero; still before the deadline */
  CHECK(bisup_proto_client_poll(&c) == BISUP_PROTO_CLIENT_WAITING);
  /* 5: the application step: trusted inputs stay local, unsure ones fall back when nobody answers */
  static bisup_app app;
  bisup_app_init(&app, &cfg, -20);
  sent_count = 0;
  bisup_app_result r = bisup_app_decide(&app, input, 64, 3, -20, silent_link, NULL);
  CHECK(r.source == BISUP_PROTO_SRC_LOCAL && r.label == 3 && sent_count == 0);
  r = bisup_app_decide(&app, input, 64, 4, -21, silent_link, NULL);
  CHECK(r.source == BISUP_PROTO_SRC_FALLBACK && r.label == 4 && !r.rejected && sent_count == 3);
  /* 5a: after a BUSY the app answers unsure inputs locally, sending nothing, until the hold has passed */
  app.client.holding = true;
  app.client.hold_until = clock_ms + 50u;
  sent_count = 0;
  r = bisup_app_decide(&app, input, 64, 6, -21, silent_link, NULL);
  CHECK(r.source == BISUP_PROTO_SRC_FALLBACK && r.label == 6 && sent_count == 0);
  CHECK(app.stats.u.stats.relayed == 1u && app.stats.u.stats.local == 2u); /* never sent: counted local */
  clock_ms += 50;
  r = bisup_app_decide(&app, input, 64, 6, -21, silent_link, NULL);
  CHECK(r.source == BISUP_PROTO_SRC_FALLBACK && sent_count == 3 && app.stats.u.stats.relayed == 2u);
  /* 5b: every BISUP_APP_STATS_EVERY inferences the app tells the host its counts since boot (STATS) */
  sent_count = 0;
  memset(sent_len, 0, sizeof(sent_len));
  for (uint32_t i = 4; i < BISUP_APP_STATS_EVERY; ++i) bisup_app_decide(&app, input, 64, 5, 0, silent_link, NULL);
  CHECK(sent_count == 1);
  bisup_proto_msg stats;
  uint8_t scratch[BISUP_PROTO_MAX_FRAME];
  CHECK(sent_len[0] > 1 &&
        bisup_proto_decode_frame(sent[0], sent_len[0] - 1, scratch, sizeof(scratch), &stats) == BISUP_PROTO_OK);
  CHECK(stats.type == BISUP_PROTO_STATS && stats.boot == BOOT && stats.u.stats.inferences == BISUP_APP_STATS_EVERY);
  CHECK(stats.u.stats.local == BISUP_APP_STATS_EVERY - 2u && stats.u.stats.relayed == 2u);
  /* 6: the largest input the build allows goes out as one frame; one element more is refused */
  static int8_t big[BISUP_PROTO_MAX_BODY];
  uint32_t most = BISUP_PROTO_MAX_BODY - BISUP_PROTO_HEADER_BYTES - BISUP_PROTO_INFER_FIXED_BYTES;
  for (uint32_t i = 0; i < most; ++i) big[i] = (int8_t)(i * 7u);
  bisup_proto_client_reset(&c);
  CHECK(!bisup_proto_client_request(&c, 50, big, most + 1u, 1, 0));
  sent_count = 0;
  bytes_sent = 0;
  CHECK(bisup_proto_client_request(&c, 50, big, most, 1, 0));
  CHECK(bytes_sent > most && bytes_sent <= BISUP_PROTO_MAX_FRAME + 1u);
  /* 7: a frame longer than the reader's buffer is one TOO_LONG, then the next frame decodes */
  bisup_proto_reader_init(&reader);
  bisup_proto_msg m;
  bool ready = false;
  bisup_proto_status st = BISUP_PROTO_OK;
  for (size_t i = 0; i < BISUP_PROTO_MAX_FRAME + 10u && !ready; ++i) {
    st = bisup_proto_reader_push(&reader, 0x01, &m, &ready);
  }
  CHECK(!ready);
  st = bisup_proto_reader_push(&reader, 0x00, &m, &ready);
  CHECK(ready && st == BISUP_PROTO_E_TOO_LONG);
  printf("client %s\n", failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "vectors") == 0) {
    load(argv[2]);
    return run_vectors();
  }
  if (argc >= 5 && strcmp(argv[1], "fuzz") == 0) {
    load(argv[2]);
    return run_fuzz(strtoul(argv[3], NULL, 10), (uint32_t)strtoul(argv[4], NULL, 10));
  }
  if (argc >= 2 && strcmp(argv[1], "client") == 0) return run_client();
  fprintf(stderr, "usage: %s vectors FILE | fuzz FILE N SEED | client\n", argv[0]);
  return 2;
}
