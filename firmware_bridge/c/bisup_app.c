/* bisup application step: see bisup_app.h. */
#include "bisup_app.h"

#include <string.h>

void bisup_app_init(bisup_app *app, const bisup_proto_client_config *link, int16_t threshold_int8) {
  bisup_proto_client_init(&app->client, link);
  app->threshold_int8 = threshold_int8;
  app->next_seq = 1;
  memset(&app->stats, 0, sizeof(app->stats));
  app->stats.type = BISUP_PROTO_STATS;
  app->stats.boot = link->boot_id;
}

/* One more inference done; every BISUP_APP_STATS_EVERY of them, tell the bridge (fire and forget: the counts
 * are cumulative, so a lost STATS only delays the figure). */
static void count_inference(bisup_app *app, bool relayed) {
  app->stats.u.stats.inferences++;
  if (relayed) {
    app->stats.u.stats.relayed++;
  } else {
    app->stats.u.stats.local++;
  }
  if (BISUP_APP_STATS_EVERY == 0u || app->stats.u.stats.inferences % BISUP_APP_STATS_EVERY != 0u) return;
  app->stats.seq = app->next_seq++;
  (void)bisup_proto_send_frame(&app->stats, BISUP_PROTO_MAX_BODY, app->client.cfg.write, app->client.cfg.ctx);
}

void bisup_app_count_local(bisup_app *app) { count_inference(app, false); }

bisup_app_result bisup_app_decide(bisup_app *app, const int8_t *input, uint32_t count, uint16_t local_label,
                                  int8_t local_confidence, bisup_app_read_byte read_byte, void *read_ctx) {
  bisup_app_result result = {local_label, BISUP_PROTO_SRC_LOCAL, false};
  if (bisup_proto_trusted(local_confidence, app->threshold_int8)) {
    bisup_app_count_local(app);
    return result;
  }
  return bisup_app_ask(app, 0, input, count, local_label, local_confidence, read_byte, read_ctx);
}

bisup_app_result bisup_app_ask(bisup_app *app, uint8_t stage, const int8_t *data, uint32_t count, uint16_t local_label,
                               int8_t local_confidence, bisup_app_read_byte read_byte, void *read_ctx) {
  bisup_app_result result = {local_label, BISUP_PROTO_SRC_FALLBACK, false};
  if (bisup_proto_client_holding(&app->client)) {
    count_inference(app, false); /* the bridge said BUSY: answer locally until its hold ends, send nothing */
    return result;
  }
  count_inference(app, true); /* before the request, so a STATS never interleaves with its answer */
  bool sent = stage ? bisup_proto_client_request_split(&app->client, app->next_seq, stage, data, count, local_label,
                                                       local_confidence)
                    : bisup_proto_client_request(&app->client, app->next_seq, data, count, local_label,
                                                 local_confidence);
  app->next_seq++;
  if (!sent) return result; /* input too large for a frame: answer locally */
  uint8_t byte;
  while (bisup_proto_client_poll(&app->client) != BISUP_PROTO_CLIENT_DONE) {
    if (read_byte(read_ctx, &byte)) bisup_proto_client_feed(&app->client, &byte, 1);
  }
  result.label = app->client.label;
  result.source = app->client.source;
  result.rejected = app->client.rejected;
  bisup_proto_client_reset(&app->client);
  return result;
}
