"""Fault injection for tests and drills, off unless CORRAL_FAULT is set in the core's
environment: `raise@N` makes step N raise (as a failing executor would), `stall@N:S` makes step
N sleep S seconds (a stuck kernel), `slow@N:S` makes every step from N on sleep S seconds (a
slow or overloaded device: tests that must act while a request runs), `exit@N` ends the core
process at step N (os._exit(70), as an out-of-memory kill would). Steps are counted from 1 by
each CoreLoop.

What the server does then is the same as for a real fault: every request in flight fails with
an error (streams get an error event, others a 503), /health answers 503 within the heartbeat
timeout, and the server stays up answering 503 until it is restarted (see docs/server.md).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

FAULT_ENV = "CORRAL_FAULT"
FAULT_EXIT_CODE = 70
FAULT_KINDS = ("raise", "stall", "slow", "exit")


class InjectedFault(RuntimeError):
    """The error a `raise@N` fault raises."""


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    at_step: int
    stall_s: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """From "raise@N", "stall@N:SECONDS", "slow@N:SECONDS" or "exit@N"; ValueError names
        the bad part."""
        kind, sep, rest = spec.partition("@")
        if kind not in FAULT_KINDS or not sep:
            raise ValueError(
                f"{FAULT_ENV}={spec!r}: expected raise@N, stall@N:SECONDS, slow@N:SECONDS or exit@N"
            )
        step_text, _, stall_text = rest.partition(":")
        sleeps = kind in ("stall", "slow")
        try:
            at_step = int(step_text)
            stall_s = float(stall_text) if sleeps else 0.0
        except ValueError:
            raise ValueError(f"{FAULT_ENV}={spec!r}: N and SECONDS must be numbers") from None
        if at_step < 1 or stall_s < 0 or (sleeps and not stall_text):
            raise ValueError(f"{FAULT_ENV}={spec!r}: N must be >= 1 and SECONDS given, >= 0")
        return cls(kind, at_step, stall_s)

    @classmethod
    def from_env(cls) -> Fault | None:
        spec = os.environ.get(FAULT_ENV)
        return cls.parse(spec) if spec else None

    def before_step(self, step_number: int) -> None:
        """Act when step_number is the faulty one (for slow: any from it on)."""
        if self.kind == "slow":
            if step_number >= self.at_step:
                time.sleep(self.stall_s)
            return
        if step_number != self.at_step:
            return
        if self.kind == "raise":
            raise InjectedFault(f"injected fault ({FAULT_ENV}) at step {step_number}")
        if self.kind == "stall":
            time.sleep(self.stall_s)
            return
        os._exit(FAULT_EXIT_CODE)
