"""The shape model: mean and principal modes of complete skulls' outer radius, fitted to a rim (issue 24)."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.implant import raycast
from SkullVAELib.implant.shapebank import ShapeBank
from SkullVAELib.implant.shapemodel import (
    INSTALLED_MODEL,
    fit_shape_model,
    installed_shape_model,
    load_shape_model,
    model_cue,
    save_shape_model,
)

STEP = 4.0


def _fields():
    alpha, beta = raycast.angle_grid(STEP)
    a, b = np.meshgrid(alpha, beta, indexing="ij")
    return a, b, [np.sin(2 * a) * np.cos(b), np.cos(3 * a) * np.sin(2 * b), np.sin(a) * np.sin(3 * b)]


def _bank(n: int = 12) -> ShapeBank:
    """Skulls of mean radius 70–90 mm whose shapes mix three smooth patterns (4 mm each at most)."""
    rng = np.random.default_rng(1)
    a, b, fields = _fields()
    maps = [rng.uniform(70, 90) * (1 + sum(0.05 * rng.uniform(-1, 1) * f for f in fields)) for _ in range(n)]
    r_out = np.stack(maps).astype(np.float32)
    return ShapeBank(STEP, r_out, np.full_like(r_out, 6.0), tuple(f"{i:03d}" for i in range(n)))


def test_a_rim_is_continued_with_the_shapes_the_skulls_share():
    """A new skull of the same family (another size, another mix): the model fitted to the rim alone
    predicts its radius inside the hole to a fraction of a millimetre."""
    model = fit_shape_model(_bank(), n_modes=3, ridge=1e-6)
    a, b, fields = _fields()
    patient = 83.0 * (1 + 0.04 * fields[0] - 0.03 * fields[1] + 0.02 * fields[2])
    hole = (np.abs(a - 1.0) < 0.35) & (np.abs(b - 0.4) < 0.35)
    rim = (np.abs(a - 1.0) < 0.7) & (np.abs(b - 0.4) < 0.7) & ~hole
    raymap = raycast.RayMap(np.zeros(3), STEP, np.ones_like(hole), patient.astype(np.float32), patient - 6.0)
    cue = model_cue(model, raymap, rim, hole)
    assert cue is not None
    assert np.abs(cue.r_out[hole] - patient[hole]).max() < 0.05
    np.testing.assert_allclose(cue.thickness[hole], 6.0, atol=1e-4)
    flat = np.full_like(patient, 83.0)  # the flat spline's guess is off by up to 4 mm
    assert np.abs(flat[hole] - patient[hole]).max() > 1.0


def test_no_cue_outside_the_domain_or_on_another_grid():
    bank = _bank()
    bank.r_out[0, :3] = np.nan  # one skull without bone near the front pole: those rays leave the domain
    model = fit_shape_model(bank, n_modes=2)
    assert not model.rays[:3].any() and model.rays[3:].all()
    a, _, _ = _fields()
    hole = a < np.deg2rad(10)  # within the rays the domain lacks
    rim = (a >= np.deg2rad(10)) & (a < np.deg2rad(30))
    raymap = raycast.RayMap(
        np.zeros(3), STEP, np.ones_like(a, bool), np.full(a.shape, 80.0, np.float32), np.full(a.shape, 74.0, np.float32)
    )
    assert model_cue(model, raymap, rim, hole) is None
    other = raycast.RayMap(np.zeros(3), 2.0, raymap.hit, raymap.r_out, raymap.r_in)
    assert model_cue(model, other, rim, ~hole) is None


def test_a_model_round_trips_and_bad_files_are_one_line_errors(tmp_path):
    model = fit_shape_model(_bank(), n_modes=3)
    assert model.card == {}
    model.card = {"trained_on": "12 phantoms", "licence": "CC0"}
    save_shape_model(model, tmp_path / "m.safetensors")
    back = load_shape_model(tmp_path / "m.safetensors")
    assert back.n_skulls == 12 and back.ridge == model.ridge and back.step_deg == STEP
    assert back.card == {"trained_on": "12 phantoms", "licence": "CC0"}
    np.testing.assert_array_equal(back.modes, model.modes)
    np.testing.assert_array_equal(back.rays, model.rays)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(SkullVAEError, match="not a readable shape model") as err:
        load_shape_model(tmp_path / "junk.safetensors")
    assert "junk.safetensors" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SkullVAEError, match="not a readable shape model"):
        load_shape_model(tmp_path / "missing.safetensors")


def test_an_installed_model_holds_no_skull():
    if not INSTALLED_MODEL.is_file():
        pytest.skip(f"no shape model installed at {INSTALLED_MODEL} (tools/make_shape_model.py; trained, not in git)")
    model = installed_shape_model()
    assert model is not None
    assert model.n_skulls == 56 and model.modes.shape[0] == 10 and model.step_deg == raycast.RIM_STEP_DEG
    assert model.rays.shape == tuple(len(g) for g in raycast.angle_grid(raycast.RIM_STEP_DEG))
    assert "000-055" in model.card.get("trained_on", "") and "CC BY-NC-SA" in model.card.get("licence", "")
    # only the mean and 10 modes: no array per skull
    assert model.modes.shape[0] < model.n_skulls


def test_the_model_tool_writes_a_model_and_never_replaces_one_unasked(tmp_path):
    """tools/make_shape_model.py: bank → model; an existing model or a bad bank is a one-line error, exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    from SkullVAELib.implant.shapebank import save_shape_bank
    from SkullVAELib.implant.shapemodel import load_shape_model

    tool = Path(__file__).resolve().parents[3] / "tools" / "make_shape_model.py"
    bank, out = tmp_path / "bank.safetensors", tmp_path / "model.safetensors"
    save_shape_bank(_bank(), bank)

    def run(*argv):
        return subprocess.run([sys.executable, str(tool), *map(str, argv)], capture_output=True, text=True)

    assert run(bank, out, "--modes", "3").returncode == 0
    made = load_shape_model(out)
    assert len(made.modes) == 3
    # the card names the bank's skulls and the licence they pass on (SkullFix's by default)
    assert (
        "12 complete skulls, case ids 000-011" in made.card["trained_on"] and "CC BY-NC-SA 4.0" in made.card["licence"]
    )
    before = out.read_bytes()
    refused = run(bank, out)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert out.read_bytes() == before
    assert run(bank, out, "--modes", "2", "--overwrite", "--source", "phantoms", "--licence", "CC0").returncode == 0
    made = load_shape_model(out)
    assert len(made.modes) == 2 and made.card["licence"] == "CC0" and made.card["trained_on"].endswith("of phantoms")
    missing = run(tmp_path / "none.safetensors", tmp_path / "other.safetensors")
    assert (
        missing.returncode == 2
        and "none.safetensors" in missing.stderr
        and not (tmp_path / "other.safetensors").exists()
    )
