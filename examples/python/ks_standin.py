"""A stand-in for the one part of hummbl-governance's KillSwitch that
file_agent.py uses, so that `make examples` can run it where the library is
not installed (it is on PyPI only).  Standard library only.

It is NOT the library.  It reads and verifies kill_switch_state.json exactly
as killswitch's ARCHITECTURE.md section 3 specifies the shared format (the signature
is the hex HMAC-SHA256, keyed with the secret, of
json.dumps(obj without "signature", separators=(",", ":"), sort_keys=True)),
and applies the reference task rules.  It offers only the calls file_agent.py
makes -- KillSwitch.load_from_file(state_dir, signing_secret=...,
critical_tasks=...), .mode, .engaged, .check_task_allowed(task) -- with the
library's documented signatures; with the real library installed,
file_agent.py imports that instead and this file is unused.
"""
import enum
import hashlib
import hmac
import json
from pathlib import Path


class KillSwitchMode(enum.Enum):
    """The four modes, by the names the file carries."""
    DISENGAGED = 1
    HALT_NONCRITICAL = 2
    HALT_ALL = 3
    EMERGENCY = 4


class KillSwitchTamperError(Exception):
    """The state file cannot be trusted (no or a wrong signature, unreadable, not JSON)."""


DEFAULT_CRITICAL_TASKS = frozenset(["safety_monitoring", "data_persistence", "audit_logging",
                                    "kill_switch_itself", "cost_tracking"])


class KillSwitch:
    """A state read from the file: its mode, and the task rules."""

    def __init__(self, mode, critical_tasks):
        self._mode = mode
        self._critical = critical_tasks or DEFAULT_CRITICAL_TASKS

    @classmethod
    def load_from_file(cls, state_dir, require_hmac=True, signing_secret=None, critical_tasks=None):
        """The state as the file says, verified; a missing file reads as DISENGAGED."""
        path = Path(state_dir) / "kill_switch_state.json"
        if not path.exists():
            return cls(KillSwitchMode.DISENGAGED, critical_tasks)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            signature = data.pop("signature", None)
            if require_hmac:
                if not (signing_secret and signature):
                    raise KillSwitchTamperError("the state file is not signed")
                canon = json.dumps(data, separators=(",", ":"), sort_keys=True)
                good = hmac.new(signing_secret, canon.encode("utf-8"), hashlib.sha256).hexdigest()
                if not hmac.compare_digest(good, signature):
                    raise KillSwitchTamperError("the state file's signature is wrong")
            return cls(KillSwitchMode[data.get("mode", "DISENGAGED")], critical_tasks)
        except (OSError, ValueError, KeyError) as e:
            raise KillSwitchTamperError(f"the state file cannot be read: {e}") from e

    @property
    def mode(self):
        """The mode the file held when it was loaded."""
        return self._mode

    @property
    def engaged(self):
        """Anything but DISENGAGED."""
        return self._mode != KillSwitchMode.DISENGAGED

    def check_task_allowed(self, task_type):
        """The reference task rules: {allowed, action, reason | note}."""
        m, critical = self._mode, task_type in self._critical
        if m == KillSwitchMode.DISENGAGED:
            return {"allowed": True, "action": "allow"}
        if m == KillSwitchMode.HALT_NONCRITICAL:
            if critical:
                return {"allowed": True, "action": "allow", "note": "critical task exempted"}
            return {"allowed": False, "action": "queue",
                    "reason": f"Kill switch engaged ({m.name}): {task_type} queued"}
        if m == KillSwitchMode.HALT_ALL and critical:
            return {"allowed": True, "action": "allow", "note": "critical only"}
        return {"allowed": False, "action": "block",
                "reason": f"Kill switch engaged ({m.name}): {task_type} blocked"}
