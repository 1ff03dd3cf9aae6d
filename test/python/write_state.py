#!/usr/bin/env python3
"""Engage through the state file as the reference library does (in place:
open with truncate, write, close, chmod 0600), with the library stand-in
beside this file (hummbl_governance/, see its kill_switch.py), for the TAP
tests and bench/ks_probe.

  write_state.py STATE_DIR SECRET_FILE MODE REASON [--stall-ms N] [--stall-until PATH]

MODE is a file mode name (HALT_ALL, ...).  --stall-ms makes the write stall
that long between its truncate and its write; --stall-until makes it stall
until PATH exists (at most 60 s).  Prints the monotonic clock (ms, the
clock of CLOCK_MONOTONIC) when the write was complete, closed and chmod-ed.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hummbl_governance import KillSwitch, KillSwitchMode  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    for name in ("state_dir", "secret_file", "mode", "reason"):
        parser.add_argument(name)
    parser.add_argument("--stall-ms", type=int, default=0)
    parser.add_argument("--stall-until")
    a = parser.parse_args()
    state_dir, secret_file, mode, reason = a.state_dir, a.secret_file, a.mode, a.reason
    stall_ms, stall_until = a.stall_ms, a.stall_until
    secret = open(secret_file, "rb").read()
    if secret.endswith(b"\n"):
        secret = secret[:-1]

    class StallingKillSwitch(KillSwitch):
        def _between_truncate_and_write(self):
            if stall_ms:
                time.sleep(stall_ms / 1000)
            deadline = time.monotonic() + 60
            while stall_until and not os.path.exists(stall_until) and time.monotonic() < deadline:
                time.sleep(0.005)

    ks = StallingKillSwitch(state_dir=state_dir, signing_secret=secret)
    ks.engage(KillSwitchMode[mode], reason=reason, triggered_by="python-library")
    print("%.3f" % (time.clock_gettime(time.CLOCK_MONOTONIC) * 1000), flush=True)


main()
