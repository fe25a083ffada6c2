"""Multi-atlas completion: complete skulls of a training set registered to the patient.

Where the geometric rim fit does not apply (a facial defect has no enclosed hole to continue
across), the missing bone is taken from complete skulls of the training set: the best-matching
ones (:mod:`.register`: affine on a 4 mm grid to choose, then affine + B-spline on 2 mm
using only the patient's bone) are resampled onto the patient's grid and averaged; bone they
agree on that lies outside the patient's surface becomes the implant (:mod:`.fill`). The set
lives in a folder (:mod:`.store`), by default ``MODEL/atlas/`` next to a model bundle.
"""

from SkullVAELib.implant.atlas.fill import AtlasConfig, AtlasFill, atlas_implant
from SkullVAELib.implant.atlas.store import AtlasSet, build_atlas_set

__all__ = ["AtlasConfig", "AtlasFill", "AtlasSet", "atlas_implant", "build_atlas_set"]
