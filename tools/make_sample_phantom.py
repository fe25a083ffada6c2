"""Rebuild the module's phantom sample and print its sha256 (for SkullVAESlicerLib/sampledata.py).

    .venv/bin/python tools/make_sample_phantom.py

Writes Resources/SampleData/SkullVAE-phantom-cranial-defect.nrrd: a procedural skull phantom with a
cranial defect (SkullVAELib.data.phantoms + SkullVAELib.data.defects), no patient data.
Testing/Python/slicer/test_slicer_sampledata.py checks that the shipped file is what this makes.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SkullVAE"))
sys.path.insert(0, str(REPO))

from SkullVAESlicerLib import sampledata  # noqa: E402

from SkullVAELib.models.download import sha256_file  # noqa: E402


def main() -> int:
    path = REPO / "Resources" / "SampleData" / sampledata.PHANTOM_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    sampledata.makePhantomSample(path)
    print(f"{path.relative_to(REPO)}: {path.stat().st_size} bytes, sha256 {sha256_file(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
