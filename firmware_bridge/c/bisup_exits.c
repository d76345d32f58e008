/* bisup exit rule: see bisup_exits.h. */
#include "bisup_exits.h"

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
