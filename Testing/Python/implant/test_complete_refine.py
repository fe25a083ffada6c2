"""`skullvae complete` with the rimfit source: first by default for cranial defects, switchable by --sources."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAELib.bundle.model_bundle import new_bundle
from SkullVAELib.core.config import PRESETS
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.io.image import write_mask


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine")
    bundle = new_bundle(PRESETS["test"], aggregated=True, seed=0)  # untrained: its implant is poor
    rng = np.random.default_rng(0)
    bundle.set_centroids({"complete": np.zeros(8), "cranial": rng.normal(size=8), "facial": rng.normal(size=8)})
    bundle.save(root / "model")
    defective, truth = cranial_defect(make_phantom(1, (96, 96, 72), (2.2, 2.2, 2.2)), 1, style="skullbreak")
    write_mask(defective, root / "defective.nrrd")
    return root, defective, truth


def test_refine_is_on_by_default_and_fills_the_hole(setup, run_complete):
    root, defective, truth = setup
    done, segments, _ = run_complete(root, "default", "cranial")
    assert done["implant_source"] == "rimfit" and not done["gamma_used"]
    assert "mirror_plane" in done["timings"]  # the mirror cue is on by default
    assert any(k.startswith("rimfit_") for k in done["timings"])
    implant = segments["Implant"]
    assert not (implant & defective.mask).any()
    assert dice(implant, truth.mask) >= 0.8
    assert np.array_equal(segments["Patient bone"], defective.mask)  # two segments that do not overlap


def test_no_refine_keeps_the_model_implant_and_symmetry_is_switchable(setup, run_complete):
    root, defective, truth = setup
    plain, segments, _ = run_complete(root, "plain", "cranial", "--sources", "model")
    assert plain["implant_source"] in ("model", "none")  # the untrained model may add no bone
    assert dice(segments["Implant"], truth.mask) < 0.8  # the untrained model does not fill it
    spline, _, _ = run_complete(root, "spline", "cranial", "--no-mirror")
    assert spline["implant_source"] == "rimfit"
    assert "mirror_plane" not in spline["timings"]


def test_slicer_logic_passes_the_refine_choice_to_the_child():
    import sys
    from pathlib import Path

    pytest.importorskip("slicer")
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "SkullVAE"))
    from SkullVAESlicerLib.process import buildCompleteCommand

    default = buildCompleteCommand("in.nrrd", "model", "out.seg.nrrd")
    assert default[default.index("--sources") + 1] == "residual,rimfit,learned,atlas,model" and "--mirror" in default
    plain = buildCompleteCommand("in.nrrd", "model", "out.seg.nrrd", sources=("learned", "model"), mirror=False)
    assert plain[plain.index("--sources") + 1] == "learned,model" and "--no-mirror" in plain
    from SkullVAELib.cli import build_parser

    args = build_parser(plain[plain.index("complete") :]).parse_args(plain[plain.index("complete") :])
    assert args.sources == ("learned", "model") and args.mirror is False  # the child's parser understands it
