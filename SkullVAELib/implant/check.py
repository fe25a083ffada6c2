"""Sanity checks of a proposed implant: never empty without saying so, volume plausible for the hole.

The expected volume of a cranial implant is the hole's area on the fitted outer surface
times the bone thickness measured on its rim (:class:`rimfit.Hole`). A proposal whose volume
is outside [``LOW``, ``HIGH``] × that is flagged: too small leaves the hole open, too large
means bone was added where no hole is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LOW, HIGH = 0.5, 2.0  # plausible implant volume / expected volume
MIN_IMPLANT_MM3 = 100.0  # less than 0.1 cm³ is no implant


def check_implant(
    implant: np.ndarray,
    voxel_volume_mm3: float,
    holes: Sequence | None = None,
    what: str = "implant",
    expected_mm3: float | None = None,
) -> list[str]:
    """Human-readable warnings about ``implant`` (bool (I, J, K)); [] when it looks plausible.

    Args:
        voxel_volume_mm3: volume of one voxel.
        holes: rimfit.Hole list (with ``expected_volume_mm3``) of the defective skull, or None.
        expected_mm3: the volume the defect needs by another estimate (the atlas implant's:
            what its registered skulls add on average); used instead of the holes' when given.
    """
    volume = float(np.count_nonzero(implant)) * float(voxel_volume_mm3)
    if expected_mm3 is not None and np.isfinite(expected_mm3):
        expected = float(expected_mm3)
    else:
        expected = sum(float(h.expected_volume_mm3) for h in holes or [] if np.isfinite(h.expected_volume_mm3))
    messages = []
    if volume < MIN_IMPLANT_MM3:
        if holes:
            messages.append(
                f"the {what} is empty ({volume:.0f} mm³) although the skull has a hole of about "
                f"{expected / 1000:.1f} cm³: no implant was produced; check the input and the settings"
            )
        else:
            messages.append(
                f"the {what} is empty ({volume:.0f} mm³): no enclosed hole was found in the vault and the "
                "model added no bone; is the skull complete, or is the defect open to the skull base?"
            )
        return messages
    if expected > 0:
        ratio = volume / expected
        if not LOW <= ratio <= HIGH:
            messages.append(
                f"implausible {what} volume: {volume / 1000:.1f} cm³ for a hole that needs about "
                f"{expected / 1000:.1f} cm³ ({ratio:.2f}x; plausible {LOW:g}-{HIGH:g}x); review it carefully"
            )
    return messages
