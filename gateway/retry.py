"""What to do after a transaction message failed: the OCPP 1.6 §3.7.1 retry policy, pure.

The wait after failure n is n x TransactionMessageRetryInterval. After
TransactionMessageAttempts failures the spec lets a charge point discard the
message; we do that for MeterValues only. A Start- or StopTransaction is what
the backend bills from, so it is kept and retried at the longest interval,
and an alarm is raised once, when it first passes the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

NEVER_DROPPED = frozenset({"StartTransaction", "StopTransaction"})


@dataclass(frozen=True)
class Decision:
    drop: bool  # discard the message (MeterValues past the attempt limit)
    delay_s: float  # wait before the next attempt (when not dropped)
    alarm: bool  # tell the operator: a billing message is stuck


def after_failure(action: str, failures: int, max_attempts: int, interval_s: float) -> Decision:
    """`failures` counts this one too (1 after the first failure)."""
    if failures < 1 or max_attempts < 1:
        raise ValueError(f"failures ({failures}) and max_attempts ({max_attempts}) start at 1")
    if failures < max_attempts:
        return Decision(drop=False, delay_s=failures * interval_s, alarm=False)
    if action not in NEVER_DROPPED:
        return Decision(drop=True, delay_s=0.0, alarm=False)
    return Decision(drop=False, delay_s=max_attempts * interval_s, alarm=failures == max_attempts)
