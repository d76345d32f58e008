/*
 * Drives the C link estimator (bisup_exits.h) from stdin for tests/test_schedule.py, one command a line:
 *   x BYTES US                                     an exchange
 *   a LOST ANSWERED                                attempts
 *   p ANSWERED US                                  a PING
 *   r PAYLOAD ANSWERED US LOST TIMEOUT_US SERVER_US LOAD   a relay
 * After each, one line: the fit (bandwidth bps, round trip s, failing share, %.17g), the measured link
 * (outage, bps, us, ppm, load) and the entry bisup_exit_lookup picks in bisup_schedule (linked in), in range.
 */
#include <stdio.h>

#include "bisup_exits.h"

extern const bisup_exit_table bisup_schedule;

/* Reads the command's arguments and applies it; false on an unknown command or a short line. */
static bool apply(bisup_exit_estimator *e, char command) {
  unsigned v[7];
  int n = command == 'r' ? 7 : 2;
  for (int k = 0; k < n; ++k)
    if (scanf("%u", &v[k]) != 1) return false;
  switch (command) {
    case 'x': bisup_exit_exchange(e, v[0], v[1]); return true;
    case 'a': bisup_exit_attempts(e, v[0], v[1] != 0); return true;
    case 'p': bisup_exit_pinged(e, v[0] != 0, v[1]); return true;
    case 'r': bisup_exit_relayed(e, v[0], v[1] != 0, v[2], v[3], v[4], v[5], (uint8_t)v[6]); return true;
    default: return false;
  }
}

int main(void) {
  bisup_exit_estimator e;
  bisup_exit_estimator_init(&e);
  char command;
  while (scanf(" %c", &command) == 1) {
    if (!apply(&e, command)) return 1;
    bisup_exit_link m = bisup_exit_measured(&e);
    bool in_range;
    unsigned entry = bisup_exit_lookup(&bisup_schedule, &m, &in_range);
    printf("%.17g %.17g %.17g %d %u %u %u %u %u %d\n", e.measured ? 8 / e.seconds_per_byte : 0.0, e.rtt_s,
           e.failing, m.outage, (unsigned)m.bandwidth_bps, (unsigned)m.rtt_us, (unsigned)m.loss_ppm,
           (unsigned)m.load, entry, in_range);
  }
  return 0;
}
