"""Sample data for the module, registered with Slicer's Sample Data module (category "SkullVAE").

Two samples:

- **SkullVAE phantom (cranial defect)**: a skull phantom with a cranial defect that the
  project makes itself (``SkullVAELib.data.phantoms.make_phantom`` +
  ``SkullVAELib.data.defects.cranial_defect``; :func:`makePhantomSample`, rebuilt by
  ``tools/make_sample_phantom.py``). It ships in ``Resources/SampleData/`` and is loaded from
  there (a ``file://`` URI): no download, so the first click always works.
- **SkullFix 056 (cranial defect)**: one real public SkullFix case (validation split), fetched
  from :data:`SKULLFIX_URL` and verified by its sha256. SkullFix: Kodym et al., Data in Brief 35
  (2021) 106902, from the AutoImplant 2020 challenge; licence CC BY-NC-SA 4.0 (non-commercial
  research; attribute SkullFix).

Registration (:func:`registerSampleData`) needs the Slicer application; everything else runs
anywhere (the download uses the library's verified downloader, standard library only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import resourcePath

CATEGORY = "SkullVAE"
PHANTOM_FILE = "SkullVAE-phantom-cranial-defect.nrrd"
PHANTOM_SEED, PHANTOM_SHAPE, PHANTOM_SPACING_MM = 7, (128, 128, 96), 1.6
PHANTOM_SHA256 = "4281263defa96832e217b6e90ab04df00d087e61352b8841b1a2c75a85766afb"  # tools/make_sample_phantom.py
#: Stated future location: a release asset of the project's repository (not uploaded yet).
SKULLFIX_URL = "https://github.com/skullvae/SlicerSkullVAE/releases/download/sample-data-v1/skullfix-056-defective.nrrd"
SKULLFIX_SHA256 = "3f73d4ba0a8b1390afc4a9689c3465ca3ee65614d300886a0944ab7e8468590c"  # defective_skull/056.nrrd
SKULLFIX_LICENCE = (
    "CC BY-NC-SA 4.0 (SkullFix, Kodym et al., Data in Brief 35 (2021) 106902; AutoImplant 2020 challenge): "
    "non-commercial research only, attribute SkullFix"
)


@dataclass(frozen=True)
class SampleSource:
    """One sample: what Slicer's Sample Data module needs, plus its licence."""

    sampleName: str
    nodeName: str
    fileName: str
    uri: str
    sha256: str
    licence: str

    @property
    def checksum(self) -> str:
        """The ``<algo>:<digest>`` form Slicer's Sample Data module verifies."""
        return f"SHA256:{self.sha256}"


def phantomPath() -> Path:
    """The shipped phantom sample (Resources/SampleData/)."""
    return resourcePath(f"SampleData/{PHANTOM_FILE}")


def sampleSources() -> list[SampleSource]:
    """The module's samples, the one without a download first."""
    return [
        SampleSource(
            "SkullVAEPhantom",
            "SkullVAE phantom (cranial defect)",
            PHANTOM_FILE,
            phantomPath().resolve().as_uri(),
            PHANTOM_SHA256,
            "Apache-2.0 (made by the project from a procedural phantom; no patient data)",
        ),
        SampleSource(
            "SkullFix056",
            "SkullFix 056 (cranial defect)",
            "skullfix-056-defective.nrrd",
            SKULLFIX_URL,
            SKULLFIX_SHA256,
            SKULLFIX_LICENCE,
        ),
    ]


def makePhantomSample(path: str | os.PathLike) -> Path:
    """Write the phantom sample: phantom ``PHANTOM_SEED`` on a 128×128×96 grid of 1.6 mm with a
    cranial defect (seed ``PHANTOM_SEED``), as a binary NRRD. Needs SkullVAELib (numpy, scipy, SimpleITK)."""
    from SkullVAELib.data.defects import cranial_defect
    from SkullVAELib.data.phantoms import make_phantom
    from SkullVAELib.io.image import write_mask

    complete = make_phantom(PHANTOM_SEED, shape=PHANTOM_SHAPE, spacing=(PHANTOM_SPACING_MM,) * 3)
    defective, _implant = cranial_defect(complete, seed=PHANTOM_SEED)
    write_mask(defective, path)
    return Path(path)


def fetchSample(source: SampleSource, folder: str | os.PathLike, progress=None) -> Path:
    """Download ``source`` into ``folder`` and verify its sha256 (a wrong file is removed and refused
    with a one-line SkullVAEError naming the URL); a verified file already there is reused."""
    from SkullVAELib.models.download import download_file

    return download_file(source.uri, Path(folder) / source.fileName, sha256=source.sha256, progress=progress)


def registerSampleData(sampleData=None) -> None:
    """Register the samples with Slicer's Sample Data module (call once Slicer has started).

    ``sampleData``: the ``SampleData`` module (default: imported). Its logic downloads into
    Slicer's cache and checks the ``SHA256:`` checksum; the phantom's ``file://`` URI needs no network.
    """
    if sampleData is None:
        import SampleData as sampleData
    icon = str(resourcePath("Icons/SkullVAE.png"))
    for source in sampleSources():
        sampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=CATEGORY,
            sampleName=source.sampleName,
            uris=source.uri,
            fileNames=source.fileName,
            nodeNames=source.nodeName,
            checksums=source.checksum,
            thumbnailFileName=icon,
            loadFileType="VolumeFile",
        )
