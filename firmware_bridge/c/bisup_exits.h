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

/*
 * The link estimator (firmware_bridge/scheduler.py, LinkEstimator and Scheduler.relayed/pinged, is the Python
 * side; same arithmetic in the same order, so both measure the same condition). It fits
 * time = round trip + bytes * 8 / bandwidth to the device's recent exchanges by exponentially weighted least
 * squares (a recent exchange weighs BISUP_EXIT_DECAY, older ones less): PINGs and relays, with the bridge's
 * estimated compute taken off a relay's time. With one message size only (PINGs alone) all of the time is round
 * trip, so a device that went local can relay again. An unanswered attempt feeds the loss rate (weight
 * BISUP_EXIT_LOSS_DECAY) and counts as an exchange that took its timeout; a relay whose every attempt timed out,
 * or a PING that did, is an outage until an exchange gets through. The load is the last ANSWER's hint.
 *
 * Arithmetic: double. The Cortex-M4F's FPU is single precision, so these are software doubles, a few dozen
 * operations per exchange (some thousand cycles, against a relay's milliseconds on the link). In exchange the
 * board measures the condition the Python device does to the last digits (tests/test_schedule.py), so both pick
 * the same entry; single precision would part from it (the variance of the sizes is a difference of sums of
 * bytes squared, where float keeps 7 digits). State: 72 bytes, no allocation.
 * Durations are microseconds (up to 2^32 - 1, about 71 minutes), sizes bytes; sqrt() needs libm.
 */
#define BISUP_EXIT_DECAY 0.5      /* weight of the exchanges before the latest one, per exchange */
#define BISUP_EXIT_LOSS_DECAY 0.9 /* the same for attempts, in the loss rate */
#define BISUP_EXIT_MAX_BPS 1e9    /* a bandwidth the fit cannot tell from infinite */
#define BISUP_EXIT_SPREAD 0.1     /* sizes closer than this (relative) cannot separate round trip and bandwidth */
/* Bytes on the wire, framing included (firmware_bridge/schedule_table.py): a PING or PONG; what a relay adds to
 * its payload (the request's header and SPLIT fields, and the ANSWER). */
#define BISUP_EXIT_PING_BYTES 14u
#define BISUP_EXIT_RELAY_OVERHEAD_BYTES (23u + 20u)

typedef struct {
  double w, x, xx, t, xt; /* decayed sums: weight, bytes, bytes^2, seconds, bytes * seconds */
  double seconds_per_byte, rtt_s; /* the fit; valid once measured */
  double failing;                 /* decayed share of unanswered attempts */
  bool measured;                  /* an exchange got through since init */
  bool outage;
  uint8_t load; /* the bridge's last load hint (ANSWER flag bits 1..3) */
} bisup_exit_estimator;

void bisup_exit_estimator_init(bisup_exit_estimator *e);
/* A request and its answer: `wire_bytes` both ways together, `us` on the link. */
void bisup_exit_exchange(bisup_exit_estimator *e, uint32_t wire_bytes, uint32_t us);
/* `lost` unanswered attempts, then one answered (or not: every attempt lost, an outage). */
void bisup_exit_attempts(bisup_exit_estimator *e, uint32_t lost, bool answered);
/* A PING: its round trip in `us` when `answered`. */
void bisup_exit_pinged(bisup_exit_estimator *e, bool answered, uint32_t us);
/* A relay of `payload` bytes: `lost` attempts that each waited `timeout_us`, then (when `answered`) one that took
 * `us` and brought the load hint `load`. `server_us`: the bridge's compute for this split at load 0 (the table's
 * latency model), scaled by 1 + the load as known before this relay and taken off each attempt's time. */
void bisup_exit_relayed(bisup_exit_estimator *e, uint32_t payload, bool answered, uint32_t us, uint32_t lost,
                        uint32_t timeout_us, uint32_t server_us, uint8_t load);
/* The condition for bisup_exit_lookup, rounded as it expects (outage also before anything was measured). */
bisup_exit_link bisup_exit_measured(const bisup_exit_estimator *e);

#ifdef __cplusplus
}
#endif

#endif /* BISUP_EXITS_H_ */
