"""The rim fit's settings (:class:`RimFitConfig`) and the holes it finds and fills (:class:`Hole`),
shared by :mod:`rimfit` (the pipeline), :mod:`rimgrow` (growing a hole, its rim rays) and
:mod:`quality`."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from SkullVAELib.implant import raycast
from SkullVAELib.implant.postprocess import PostprocessConfig


@dataclass
class RimFitConfig:
    """Settings of the rim fit (angles in degrees, lengths in mm)."""

    step_deg: float = raycast.RIM_STEP_DEG
    min_hole_sr: float = 0.02  # smaller ray holes (foramina, noise) are not defects
    far_hole_share: float = 0.1  # a hole under this share of the largest one's solid angle ...
    far_hole_deg: float = 15.0  # ... and farther than this from it is a gap of thin bone, not filled (0: off)
    # a hole farther than far_hole_deg from the defect whose rim's outer radii spread about their linear trend
    # by more than this (interquartile range, mm; rimholes.rim_spread_mm) lies in no shell: thin bone between
    # bones at other depths (the orbits' roofs), not filled (0: off). Second defects on the extra skulls' vaults:
    # at most 8.2 mm; 20 mm cuts low and forward on SkullFix's skulls: 16.1 mm (into the orbit); the orbits'
    # roofs lost at 700 HU: 20.5-24 mm
    gap_rim_spread_mm: float = 18.0
    ring: tuple[int, int] = (3, 12)  # rim rays: between these many cells outside the hole (with trim_mm; 5-12 before)
    # the fill: the per-ray median of fills whose ring reaches these many cells out, ring's own always among
    # them (rimmedian; (): that ring alone)
    fill_rings: tuple[int, ...] = (6, 9, 12)
    band: int = 6  # cells around the hole that are rasterised too (partial rays at the cut)
    smoothing: float = 0.01  # thin-plate spline smoothing (RBFInterpolator); tuned on validation
    degree: int = 2  # quadratic polynomial part: the vault curves (tuned on validation 056-063)
    thickness_degree: int = 2  # the same for the bone thickness
    thickness_smoothing: float = 0.01
    smoothing_voxel_mm: float = 1.0  # on coarser voxels both smoothings grow with their square (for_voxels; 0: off)
    max_rim_points: int = 600
    grow_mm: float = 5.0  # rays whose outer bone lies this far inside the fitted surface join the hole
    grow_iterations: int = 3
    trim_mm: float = 0.5  # rim rays this much thinner than the far rim predicts are no rim data (0: off; rimgrow)
    grow_thick_mm: float = 0.0  # rays this much thinner than the rim's thickness spline join the hole too (0: off)
    mirror_thickness: float | None = None  # share of the mirror's thickness followed; None: fitted on the rim
    grow_reach: int = 6  # grown rays lie within this many cells of the hole as found (see grow_hole)
    shape_neighbours: int = 10  # a shape bank's members averaged where the mirror gives no cue (0: no shape cue)
    mirror_share: float = 1.0  # the mirror fill's share, the rest the plain spline's (1: mirror only; RESULTS.md)
    mirror_thickness_cap_mm: float = 0.0  # the mirror fill's thickness within this of the plain spline's (0: off)
    closing_mm: float = 1.0
    min_island_mm3: float = 50.0
    min_piece_fraction: float = 0.0  # pieces below this × the largest are dropped (the atlas implant's 0.1)
    shell_plate_mm: float = PostprocessConfig.shell_plate_mm  # voxel axes longer than this leave the thin-shell count
    # each hole's fill is post-processed on its own; a hole's implant farther from the largest one than the
    # post-processing's max_gap_mm is then kept when it holds at least this × its voxels: a second defect
    # (SkullBreak-style defects beside SkullFix's: 0.28-0.8), not a gap of thin bone (skullfix_test 047: 0.12)
    second_defect_fraction: float = 0.2
    edge_margin_mm: float = 5.0  # a miss ray leaving the scan before the skull's radius + this is unknown, not open
    beyond_mm: float = 15.0  # ... and one leaving it this far before the skull fills nothing inside the scan
    max_angle_deg: float = 85.0  # region cells farther than this from the hole's direction are not filled
    # a hole nearer a grid pole than this is filled in a frame pitched until it is this far (gridturn; 0: off):
    # the widest rim ring and the growth reach, (12 + 6) cells of 0.75°, clear of the pole
    pole_clearance_deg: float = 13.5
    # a skull whose vault reads hollow to the rays (a mask thresholded above the diploë; implant/hollow) has the
    # space between its tables filled and is fitted again (False: only a warning); read by the CompletionContext,
    # which runs the rim fit: rim_fit itself fits the skull it is given
    join_hollow: bool = True

    def __post_init__(self) -> None:
        self.fill_rings = tuple(int(outer) for outer in self.fill_rings)
        if any(outer < 1 for outer in self.fill_rings):
            raise ValueError(f"fill_rings are ring widths in cells (≥ 1): {self.fill_rings}")

    def for_voxels(self, spacing) -> RimFitConfig:
        """These settings for a scan of voxel sides ``spacing`` (3,) mm: the splines' smoothing times
        (largest side / ``smoothing_voxel_mm``)² where that exceeds 1, else unchanged.

        A ray reads the bone's surfaces to about a voxel along it, so on a scan of 1-3 mm slices the rim's
        radii and thicknesses are noisier than on SkullFix's 0.4-0.75 mm voxels (for which nothing
        changes), and a spline through them bends with the noise. Measured on validation cases
        resampled to clinical slices (docs/results/issue-24-2026-12-05.md, "The rim fit on coarser scans")."""
        largest = float(np.max(spacing))
        if self.smoothing_voxel_mm <= 0 or largest <= self.smoothing_voxel_mm:
            return self
        factor = (largest / self.smoothing_voxel_mm) ** 2
        return replace(self, smoothing=self.smoothing * factor, thickness_smoothing=self.thickness_smoothing * factor)

    def postprocess(self) -> PostprocessConfig:
        """The shared post-processing's settings of this rim fit."""
        return PostprocessConfig(
            self.closing_mm, self.min_island_mm3, self.min_piece_fraction, shell_plate_mm=self.shell_plate_mm
        )


@dataclass
class Hole:
    """One defect hole in the ray map.

    Attributes:
        cells: bool (Nα, Nβ) rays of the hole.
        solid_angle_sr: its solid angle.
        direction: (3,) unit LPS mean direction.
        rim_thickness_mm: median thickness on the rim.
        area_mm2: hole area on the fitted outer surface.
        expected_volume_mm3: area × rim thickness.
        source: "spline" or "<cue>+spline" (:mod:`rimcue`).
    """

    cells: np.ndarray
    solid_angle_sr: float
    direction: np.ndarray
    rim_thickness_mm: float = float("nan")
    area_mm2: float = float("nan")
    expected_volume_mm3: float = float("nan")
    source: str = "spline"
    outside_fraction: float = 0.0  # share of its solid angle that lies outside the scan (not filled)
    seen_sr: float = float("nan")  # at the scan's edge: sr of rays passing the filled surface inside the scan
    unusable: np.ndarray | None = None  # bool (Nα, Nβ) hit rays that are no rim data (bone cut by the scan's edge)
