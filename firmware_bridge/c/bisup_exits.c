/* bisup exit rule: see bisup_exits.h. */
#include "bisup_exits.h"

#include <math.h>
#include <string.h>

int64_t bisup_exit_score(const bisup_exit_rule *rule, int exit_index, const int8_t *confidences,
                         const int8_t *scores, int classes, uint16_t *label) {
  int top = 0, second = -1; /* indices of the largest and runner-up score; ties keep the first index */
  for (int k = 1; k < classes; ++k) {
    if (scores[k] > scores[top]) {
      second = top;
      top = k;
    } else if (second < 0 || scores[k] > scores[second]) {
      second = k;
    }
  }
  *label = (uint16_t)top;
  if (rule->weights == NULL) return confidences[exit_index];
  int64_t score = rule->bias;
  for (int e = 0; e <= exit_index; ++e) score += (int64_t)rule->weights[e] * confidences[e];
  int32_t runner_up = second < 0 ? scores[top] : scores[second];
  score += (int64_t)rule->weights[exit_index + 1] * scores[top];
  score += (int64_t)rule->weights[exit_index + 2] * (scores[top] - runner_up);
  return score;
}

static int count_at_most(const uint32_t *axis, int n, uint32_t value) {
  int k = 0;
  while (k < n && axis[k] <= value) ++k;
  return k;
}

static int count_below(const uint32_t *axis, int n, uint32_t value) {
  int k = 0;
  while (k < n && axis[k] < value) ++k;
  return k;
}

uint8_t bisup_exit_lookup(const bisup_exit_table *t, const bisup_exit_link *m, bool *in_range) {
  int b = count_at_most(t->bandwidths_bps, t->n_bandwidths, m->bandwidth_bps) - 1; /* nearest below */
  int r = count_below(t->rtts_us, t->n_rtts, m->rtt_us);                           /* nearest above */
  int l = count_below(t->losses_ppm, t->n_losses, m->loss_ppm);
  int d = 0;
  while (d < t->n_loads && t->loads[d] < m->load) ++d;
  *in_range = !m->outage && b >= 0 && r < t->n_rtts && l < t->n_losses && d < t->n_loads;
  if (!*in_range) return t->safe;
  return t->cells[((b * t->n_rtts + r) * t->n_losses + l) * t->n_loads + d];
}

void bisup_exit_estimator_init(bisup_exit_estimator *e) { memset(e, 0, sizeof *e); }

static double max_of(double a, double b) { return b > a ? b : a; }

/* The least-squares line through the decayed sums; too little spread in size puts it all down to round trip. */
static void fit(bisup_exit_estimator *e) {
  double mean_x = e->x / e->w, mean_t = e->t / e->w;
  double var = e->xx / e->w - mean_x * mean_x;
  double slope = var > (BISUP_EXIT_SPREAD * mean_x) * (BISUP_EXIT_SPREAD * mean_x)
                     ? (e->xt / e->w - mean_x * mean_t) / var
                     : 0.0;
  e->seconds_per_byte = max_of(slope, 8 / BISUP_EXIT_MAX_BPS);
  e->rtt_s = max_of(mean_t - e->seconds_per_byte * mean_x, 0.0);
}

static void exchange_s(bisup_exit_estimator *e, double x, double seconds) {
  const double d = BISUP_EXIT_DECAY;
  e->w = d * e->w + 1;
  e->x = d * e->x + x;
  e->xx = d * e->xx + x * x;
  e->t = d * e->t + seconds;
  e->xt = d * e->xt + x * seconds;
  e->measured = true;
  e->outage = false;
  fit(e);
}

void bisup_exit_exchange(bisup_exit_estimator *e, uint32_t wire_bytes, uint32_t us) {
  exchange_s(e, (double)wire_bytes, us / 1e6);
}

static void attempt(bisup_exit_estimator *e, double outcome) {
  e->failing = BISUP_EXIT_LOSS_DECAY * e->failing + (1 - BISUP_EXIT_LOSS_DECAY) * outcome;
}

void bisup_exit_attempts(bisup_exit_estimator *e, uint32_t lost, bool answered) {
  for (uint32_t k = 0; k < lost; ++k) attempt(e, 1.0);
  if (answered) attempt(e, 0.0);
  e->outage = e->outage || !answered;
}

void bisup_exit_pinged(bisup_exit_estimator *e, bool answered, uint32_t us) {
  if (answered) bisup_exit_exchange(e, 2 * BISUP_EXIT_PING_BYTES, us);
  bisup_exit_attempts(e, 0, answered);
}

void bisup_exit_relayed(bisup_exit_estimator *e, uint32_t payload, bool answered, uint32_t us, uint32_t lost,
                        uint32_t timeout_us, uint32_t server_us, uint8_t load) {
  double x = (double)payload + BISUP_EXIT_RELAY_OVERHEAD_BYTES, server = server_us / 1e6 * (1 + e->load);
  for (uint32_t k = 0; k < lost; ++k) exchange_s(e, x, max_of(timeout_us / 1e6 - server, 0.0));
  bisup_exit_attempts(e, lost, answered);
  if (!answered) return;
  e->load = load;
  exchange_s(e, x, max_of(us / 1e6 - server, 0.0));
}

/* A whole, non-negative value as uint32_t, saturating (as c_link() in schedule_table.py rounds). */
static uint32_t clamp_u32(double value) { return value >= 4294967295.0 ? UINT32_MAX : (uint32_t)value; }

bisup_exit_link bisup_exit_measured(const bisup_exit_estimator *e) {
  bisup_exit_link m = {true, 0, 0, 0, 0};
  if (e->outage || !e->measured) return m;
  double failing = e->failing < 0.999 ? e->failing : 0.999;
  double loss = 1 - sqrt(1 - failing); /* an attempt fails when either message is lost */
  m.outage = false;
  m.bandwidth_bps = clamp_u32(floor(8 / e->seconds_per_byte));
  m.rtt_us = clamp_u32(ceil(e->rtt_s * 1e6));
  m.loss_ppm = clamp_u32(ceil(loss * 1e6));
  m.load = e->load;
  return m;
}
