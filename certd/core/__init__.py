"""Pure rules: time, durations, renewal policy, status, the signed-request scheme. No I/O."""
