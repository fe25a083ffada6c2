"""Render the README and Extensions Index images from a REAL completion, offscreen with VTK.

    .venv/bin/python tools/render_readme_images.py [--case ../shared/data/skullfix/defective_skull/056.nrrd]

1. Runs ``skullvae complete --input CASE --output RESULT.seg.nrrd --defect cranial`` (no model: the
   rim fit) in a temporary folder, exactly as a user would.
2. Reads the result (segments "Patient bone" and "Implant") with SkullVAELib.io.segfile.
3. Renders offscreen (VTK, EGL/OSMesa; no display needed):
   - docs/images/skullvae-3d.png: the patient's bone and the implant as surfaces (flying edges
     + windowed-sinc smoothing, as Slicer shows segments in 3D), the implant in IMPLANT_COLOR;
   - docs/images/skullvae-slices.png: axial, coronal and sagittal slices through the implant's
     centre (bone light grey, implant in IMPLANT_COLOR), in physical proportions.
Prints the completion's result line and each image's size (each must stay < 300 kB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from SkullVAELib.core.config import IMPLANT_COLOR  # noqa: E402

BONE_RGB = (0.89, 0.85, 0.79)
DEFAULT_CASE = REPO.parent / "shared" / "data" / "skullfix" / "defective_skull" / "056.nrrd"
MAX_BYTES = 300_000


def complete(case: Path, folder: Path) -> tuple[Path, dict]:
    """Run the real CLI without a model; the result file and its JSON record."""
    output = folder / "result.seg.nrrd"
    exe = Path(sys.executable).with_name("skullvae")
    args = [str(exe), "complete", "--input", str(case), "--output", str(output), "--defect", "cranial"]
    run = subprocess.run([*args, "--progress", "json"], capture_output=True, text=True, check=True)
    record = json.loads(run.stdout.strip().splitlines()[-1])
    return output, record


def to_vtk_image(mask: np.ndarray, spacing, step: int = 1) -> vtk.vtkImageData:
    """A (I, J, K) bool mask as vtkImageData (unsigned char), every ``step``-th voxel, in index-aligned mm."""
    sub = np.ascontiguousarray(mask[::step, ::step, ::step], dtype=np.uint8)
    image = vtk.vtkImageData()
    image.SetDimensions(*sub.shape)
    image.SetSpacing(*(np.asarray(spacing, dtype=float) * step))
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(sub.ravel(order="F"), deep=True))
    return image


def surface(mask: np.ndarray, spacing, step: int) -> vtk.vtkPolyData:
    """Smoothed surface of a mask (flying edges + windowed sinc, like Slicer's closed surface)."""
    edges = vtk.vtkDiscreteFlyingEdges3D()
    edges.SetInputData(to_vtk_image(mask, spacing, step))
    edges.SetValue(0, 1)
    smooth = vtk.vtkWindowedSincPolyDataFilter()
    smooth.SetInputConnection(edges.GetOutputPort())
    smooth.SetNumberOfIterations(30)
    smooth.SetPassBand(0.01)  # Slicer's default closed-surface smoothing (factor 0.5)
    smooth.NormalizeCoordinatesOn()
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(smooth.GetOutputPort())
    normals.Update()
    return normals.GetOutput()


def _actor(poly: vtk.vtkPolyData, rgb) -> vtk.vtkActor:
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputData(poly)
    mapper.ScalarVisibilityOff()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*rgb)
    actor.GetProperty().SetSpecular(0.2)
    return actor


def write_png(window: vtk.vtkRenderWindow | None, path: Path, rgb: np.ndarray | None = None) -> int:
    """Write a render window (or an (H, W, 3) uint8 array) as PNG; returns its size in bytes."""
    writer = vtk.vtkPNGWriter()
    writer.SetCompressionLevel(9)
    writer.SetFileName(str(path))
    if window is not None:
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(window)
        grab.Update()
        writer.SetInputData(grab.GetOutput())
    else:
        h, w, _ = rgb.shape
        image = vtk.vtkImageData()
        image.SetDimensions(w, h, 1)
        flipped = np.ascontiguousarray(rgb[::-1]).reshape(-1, 3)  # VTK's rows go bottom-up
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flipped, deep=True))
        writer.SetInputData(image)
    writer.Write()
    return path.stat().st_size


def render_3d(bone: np.ndarray, implant: np.ndarray, spacing, path: Path, size=(800, 600)) -> int:
    """Bone and implant surfaces, seen from outside the implant (LPS index axes: +z up)."""
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(1.0, 1.0, 1.0)
    renderer.AddActor(_actor(surface(bone, spacing, step=2), BONE_RGB))
    renderer.AddActor(_actor(surface(implant, spacing, step=1), IMPLANT_COLOR))
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetMultiSamples(8)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    spacing = np.asarray(spacing, dtype=float)
    skull_centre = np.argwhere(bone).mean(axis=0) * spacing
    implant_centre = np.argwhere(implant).mean(axis=0) * spacing
    direction = implant_centre - skull_centre
    direction /= np.linalg.norm(direction)
    side = np.cross(direction, [0.0, 0.0, 1.0])  # turn 40° around the vertical: the skull's shape shows
    if np.linalg.norm(side) > 1e-6:
        direction = np.cos(np.radians(40)) * direction + np.sin(np.radians(40)) * side / np.linalg.norm(side)
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(*skull_centre)
    camera.SetPosition(*(skull_centre + 600.0 * (direction + np.array([0.0, 0.0, 0.6]))))
    camera.SetViewUp(0.0, 0.0, 1.0)
    renderer.ResetCamera()
    camera.Zoom(1.25)
    window.Render()
    return write_png(window, path)


def _panel(bone2d: np.ndarray, implant2d: np.ndarray, pixel_mm: tuple[float, float], mm_per_px: float) -> np.ndarray:
    """One slice as RGB (rows = first axis), resampled to square pixels of ``mm_per_px``."""
    rows = np.clip((np.arange(int(bone2d.shape[0] * pixel_mm[0] / mm_per_px)) * mm_per_px / pixel_mm[0]), 0, None)
    cols = np.arange(int(bone2d.shape[1] * pixel_mm[1] / mm_per_px)) * mm_per_px / pixel_mm[1]
    r, c = rows.astype(int).clip(0, bone2d.shape[0] - 1), cols.astype(int).clip(0, bone2d.shape[1] - 1)
    b, i = bone2d[np.ix_(r, c)], implant2d[np.ix_(r, c)]
    rgb = np.zeros((*b.shape, 3), dtype=np.uint8)
    rgb[b] = (np.array(BONE_RGB) * 255).astype(np.uint8)
    rgb[i] = (np.array(IMPLANT_COLOR) * 255).astype(np.uint8)
    return rgb


def render_slices(bone: np.ndarray, implant: np.ndarray, spacing, path: Path, mm_per_px: float = 0.6) -> int:
    """Axial, coronal and sagittal slices through the implant's centre, side by side (radiological-like:
    anterior up in the axial view, superior up in the others)."""
    sx, sy, sz = (float(s) for s in spacing)
    ci, cj, ck = (int(round(v)) for v in np.argwhere(implant).mean(axis=0))
    axial = _panel(bone[:, :, ck].T, implant[:, :, ck].T, (sy, sx), mm_per_px)  # rows j (P), cols i
    coronal = _panel(bone[:, cj, :].T[::-1], implant[:, cj, :].T[::-1], (sz, sx), mm_per_px)  # superior up
    sagittal = _panel(bone[ci, :, :].T[::-1], implant[ci, :, :].T[::-1], (sz, sy), mm_per_px)
    height = max(p.shape[0] for p in (axial, coronal, sagittal))
    gap = np.full((height, 8, 3), 255, dtype=np.uint8)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0))) for p in (axial, coronal, sagittal)]
    return write_png(None, path, np.concatenate([padded[0], gap, padded[1], gap, padded[2]], axis=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="defective skull (SkullFix validation case)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args(argv)
    from SkullVAELib.io.segfile import read_segmentation

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        result, record = complete(args.case, Path(folder))
        image, segments = read_segmentation(result)
    print("completion:", record["message"], "| implant source:", record["result"]["implant_source"])
    bone, implant = segments["Patient bone"], segments["Implant"]
    sizes = {
        "skullvae-3d.png": render_3d(bone, implant, image.spacing, args.out / "skullvae-3d.png"),
        "skullvae-slices.png": render_slices(bone, implant, image.spacing, args.out / "skullvae-slices.png"),
    }
    for name, size in sizes.items():
        print(f"{args.out / name}: {size / 1000:.0f} kB")
        if size >= MAX_BYTES:
            raise SystemExit(f"{name} is {size} bytes, over {MAX_BYTES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
