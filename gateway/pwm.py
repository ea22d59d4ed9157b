"""Control-pilot PWM duty cycle <-> the current it offers, IEC 61851-1 Annex A, Table A.8.

Some controllers (ABL eMH) take their current limit as the duty cycle the
charger puts on the control pilot, not in amperes. Pure arithmetic.
"""

from __future__ import annotations

MIN_A = 6.0  # the lowest current a duty cycle can offer (10 %)
MAX_A = 80.0  # the highest (96 %)


def amps_to_duty(amperes: float) -> float:
    """The duty cycle in % that offers `amperes` (the charger's side of Table A.8).

    6..51 A: D = I / 0.6; 51..80 A: D = I / 2.5 + 64. The vehicle reads 85 % as
    51 A and only duty cycles above 85 % on the second line, which starts at
    52.5 A, so 51..52.5 A is offered as 51 A: never more than asked. Below 6 A
    no duty cycle offers current (a pause is another value, e.g. 100 % = no
    PWM), so it is a ValueError, as is anything above 80 A.
    """
    if not MIN_A <= amperes <= MAX_A:
        raise ValueError(f"no PWM duty cycle offers {amperes:g} A (IEC 61851-1 Table A.8: 6..80 A)")
    if amperes <= 51.0:
        return amperes / 0.6
    return 85.0 if amperes < 52.5 else amperes / 2.5 + 64.0


def duty_to_amps(duty: float) -> float:
    """The current a duty cycle in % offers (the vehicle's side of Table A.8); 0 where it offers none.

    Under 8 % (digital communication at 3..7 %, or no PWM) and over 97 % (100 % =
    a steady +12 V, "not available") offer nothing; 8..10 % offer 6 A.
    """
    if duty < 8.0 or duty > 97.0:
        return 0.0
    if duty < 10.0:
        return MIN_A
    if duty <= 85.0:
        return duty * 0.6
    if duty <= 96.0:
        return (duty - 64.0) * 2.5
    return MAX_A
