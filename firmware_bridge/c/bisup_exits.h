/*
 * bisup exit rule: how a multi-exit device decides after each stage (converters/artefacts.py (Policy) is the
 * Python side; both compute the same integers, so the board decides exactly as calibration assumed).
 *
 * The score of exit e is its int8 supervisor confidence ("thresholds" policy), or EENet's learned
 * scorer: features . weights + bias over e + 3 int8 features (the confidences of exits 0..e, the exit's
 * top int8 score, its top-1 minus top-2), at most a few multiply-adds. The device answers at exit e
 * when score >= threshold.
 *
 * Names: every function and type here starts with bisup_exit_.
 * Every public C name of bisup starts with bisup_<module>_ or BISUP_<MODULE>_ (README, "Firmware templates").
 */
#ifndef BISUP_EXITS_H_
#define BISUP_EXITS_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  const int32_t *weights; /* NULL: the score is the exit's confidence; else exit_index + 3 weights */
  int32_t bias;
  int64_t threshold; /* answer here when score >= threshold; 2^40 or more: never */
} bisup_exit_rule;

/* confidences: exits 0..exit_index; scores: the exit's `classes` int8 class scores. Also returns the label. */
int64_t bisup_exit_score(const bisup_exit_rule *rule, int exit_index, const int8_t *confidences,
                         const int8_t *scores, int classes, uint16_t *label);

static inline bool bisup_exit_answers(const bisup_exit_rule *rule, int64_t score) { return score >= rule->threshold; }

/*
 * The run-time schedule (SPINN): which policy entry to run for the link as measured. The table is the one
 * `bisup calibrate --latency-slo-ms` writes into policy.json (firmware_bridge/schedule_table.py, whose
 * c_source() emits it as C); its axes are ascending, in integer units. The lookup is conservative, as in
 * Python: the nearest calibrated bandwidth at or below the measured one, the nearest round trip, loss and
 * load at or above. Off the grid (slower, longer, lossier than calibrated, or an outage) it returns the
 * safe entry, which never relays, and clears *in_range: count those in STATS (PROTOCOL.md).
 */
typedef struct {
  const uint32_t *bandwidths_bps;
  const uint32_t *rtts_us;
  const uint32_t *losses_ppm; /* chance a message is lost, in parts per million */
  const uint8_t *loads;       /* the bridge's load levels (ANSWER flag bits 1..3) */
  uint8_t n_bandwidths, n_rtts, n_losses, n_loads;
  const uint8_t *cells; /* entry index per (bandwidth, rtt, loss, load), the last axis fastest */
  uint8_t safe;
} bisup_exit_table;

typedef struct {
  bool outage;           /* no exchange got through lately */
  uint32_t bandwidth_bps; /* rounded down */
  uint32_t rtt_us;       /* rounded up */
  uint32_t loss_ppm;     /* rounded up */
  uint8_t load;
} bisup_exit_link;

uint8_t bisup_exit_lookup(const bisup_exit_table *table, const bisup_exit_link *measured, bool *in_range);

#ifdef __cplusplus
}
#endif

#endif /* BISUP_EXITS_H_ */
