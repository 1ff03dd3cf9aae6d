"""A stand-in for the part of hummbl-governance's KillSwitch that reads and
writes kill_switch_state.json, for killswitch's tests: the library itself is
not installable here.  It is NOT the library.  It behaves as the README
("Interoperating with the Python library") describes the library's source:

- load_from_file(state_dir, require_hmac=True, signing_secret=None,
  critical_tasks=None) reads the file, takes "signature" out and verifies it
  (hex HMAC-SHA256 of json.dumps(rest, separators=(",", ":"), sort_keys=True))
  and raises KillSwitchTamperError on a missing or wrong one; a missing file
  reads as DISENGAGED;
- engage(mode, reason, triggered_by) and disengage(triggered_by, reason)
  record an event and persist: _persist() opens the file with truncate
  (open(..., "w")), json.dump()s _build_state_data() into it with indent=2,
  closes it, then makes it 0600 — in place, without a lock;
- _build_state_data() is the documented place to extend what is written:
  mode, engaged_at, reason and triggered_by of the last event, and
  signature over them.

One hook that the library does not have, for the tests' writers:
_between_truncate_and_write(), called after the truncate and before the
write (a no-op here), so that a test can make a write stall there.
"""
import enum
import hashlib
import hmac
import json
import os
from datetime import datetime, timezone
from pathlib import Path


class KillSwitchMode(enum.Enum):
    DISENGAGED = 1
    HALT_NONCRITICAL = 2
    HALT_ALL = 3
    EMERGENCY = 4


class KillSwitchTamperError(Exception):
    """The state file cannot be trusted."""


class KillSwitch:
    def __init__(self, state_dir=None, require_hmac=True, signing_secret=None, critical_tasks=None):
        self._mode = KillSwitchMode.DISENGAGED
        self._history = []      # (timestamp, mode, reason, triggered_by)
        self._state_dir = Path(state_dir) if state_dir is not None else None
        self._require_hmac = require_hmac
        self._signing_secret = signing_secret
        self._critical_tasks = critical_tasks

    @property
    def mode(self):
        return self._mode

    def _get_signing_secret(self):
        if self._signing_secret:
            return self._signing_secret
        value = os.environ.get("HUMMBL_SIGNING_SECRET")
        return value.encode("utf-8") if value else None

    @staticmethod
    def _compute_signature(data, secret):
        canonical = json.dumps(data, separators=(",", ":"), sort_keys=True)
        return hmac.new(secret, canonical.encode("utf-8"), hashlib.sha256).hexdigest()

    @classmethod
    def load_from_file(cls, state_dir, require_hmac=True, signing_secret=None, critical_tasks=None):
        ks = cls(state_dir=state_dir, require_hmac=require_hmac, signing_secret=signing_secret,
                 critical_tasks=critical_tasks)
        path = Path(state_dir) / "kill_switch_state.json"
        if not path.exists():
            return ks
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise KillSwitchTamperError(f"the state file cannot be read: {e}") from e
        signature = data.pop("signature", None)
        secret = ks._get_signing_secret()
        if secret and signature:
            if not hmac.compare_digest(cls._compute_signature(data, secret), signature):
                raise KillSwitchTamperError("the state file's signature is wrong")
        elif require_hmac:
            raise KillSwitchTamperError("the state file is not signed")
        ks._mode = KillSwitchMode[data.get("mode", "DISENGAGED")]
        if ks._mode != KillSwitchMode.DISENGAGED:
            ks._history.append((data.get("engaged_at"), ks._mode, data.get("reason"),
                                data.get("triggered_by")))
        return ks

    def _build_state_data(self):
        last = self._history[-1] if self._history else None
        data = {
            "mode": self._mode.name,
            "engaged_at": last[0] if last else None,
            "reason": last[2] if last else None,
            "triggered_by": last[3] if last else None,
        }
        secret = self._get_signing_secret()
        if secret:
            data["signature"] = self._compute_signature(data, secret)
        return data

    def _between_truncate_and_write(self):
        """Not in the library: a test's writer may stall here."""

    def _persist(self):
        if self._state_dir is None:
            return
        path = self._state_dir / "kill_switch_state.json"
        with open(path, "w", encoding="utf-8") as f:
            self._between_truncate_and_write()
            json.dump(self._build_state_data(), f, indent=2)
        path.chmod(0o600)

    def _record(self, mode, reason, triggered_by):
        self._mode = mode
        self._history.append((datetime.now(timezone.utc).isoformat(), mode, reason, triggered_by))
        self._persist()

    def engage(self, mode, reason, triggered_by, affected_tasks=0):
        if mode == KillSwitchMode.DISENGAGED:
            raise ValueError("use disengage() to release")
        self._record(mode, reason, triggered_by)

    def disengage(self, triggered_by, reason=None):
        self._record(KillSwitchMode.DISENGAGED, reason or f"Disengaged from {self._mode.name}",
                     triggered_by)
