"""A stand-in for the reference library hummbl-governance, for the tests only
(it is not installable here).  See kill_switch.py."""
from .kill_switch import KillSwitch, KillSwitchMode, KillSwitchTamperError

__all__ = ["KillSwitch", "KillSwitchMode", "KillSwitchTamperError"]
