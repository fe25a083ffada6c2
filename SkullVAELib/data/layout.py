"""The data set's folder layout and image file names: light (no torch, no imaging), so a batch of
completions or a listing of a folder does not pay for the training stack's imports.

::

    DATA/complete_skull/ID.nrrd            class "complete"
    DATA/defective_skull/ID.nrrd           class "cranial"  (the SkullFix name)
    DATA/implant/ID.nrrd                   cranial implant of ID (evaluation only)
    DATA/facial_defective_skull/ID.nrrd    class "facial"
    DATA/facial_implant/ID.nrrd            facial implant of ID (evaluation only)
"""

from __future__ import annotations

LABEL_FOLDERS = {"complete": "complete_skull", "cranial": "defective_skull", "facial": "facial_defective_skull"}
IMPLANT_FOLDERS = {"cranial": "implant", "facial": "facial_implant"}
LABELS = tuple(LABEL_FOLDERS)
EXTENSIONS = (".nii.gz", ".nrrd", ".nii", ".mha", ".mhd")


def split_case_name(name: str) -> tuple[str, str] | None:
    """(case id, extension) of an image file name of the layout, or None (hidden, or not EXTENSIONS)."""
    if name.startswith("."):
        return None
    for ext in EXTENSIONS:
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[len(name) - len(ext) :]
    return None
