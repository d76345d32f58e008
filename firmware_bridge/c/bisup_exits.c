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
