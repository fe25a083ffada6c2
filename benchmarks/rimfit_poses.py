"""The rim fit with the head in other poses: the same SkullFix skull turned in space (issue 24, "any skull").

Not a timing. Each (case, defect, seed) is run once per pose with the defaults of the ``rimfit`` source
(mirror plane, then the rim fit), the skull *turned* about its bone's centroid by changing only its
header (origin and direction): the voxels, and so the true implant's voxels, stay as they are, so every
pose is scored against the same truth with no resampling. A pose is ``pitch``/``roll``/``yaw`` and signed
degrees: about the LPS x axis (chin down or up), the y axis (a head rolled onto a shoulder) and the
z axis (turned left or right). One JSON line per run (appended), then ``--summary`` gives each pose's
mean, weakest and the per-case bar::

    nice -n 10 .venv/bin/python benchmarks/rimfit_poses.py --ids 056-063 --defects cranial,vault \\
        --poses none,pitch+20,pitch-20,roll+15,yaw-25 --out /tmp/poses.jsonl
    .venv/bin/python benchmarks/rimfit_poses.py --summary /tmp/poses.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict
from dataclasses import replace

import numpy as np
from _cases import add_case_arguments, selected_cases
from scipy.spatial.transform import Rotation

from SkullVAELib.evaluation.implants import score
from SkullVAELib.implant.gridturn import GridTurn
from SkullVAELib.implant.raycast import bone_points
from SkullVAELib.implant.rimfit import rim_fit
from SkullVAELib.implant.symmetry import find_mirror_plane

_AXES = {"pitch": "x", "roll": "y", "yaw": "z"}


def pose_rotation(pose: str) -> np.ndarray:
    """(3, 3) LPS rotation of a pose name: "none", or pitch/roll/yaw with signed degrees ("pitch-20")."""
    if pose == "none":
        return np.eye(3)
    found = re.fullmatch(r"(pitch|roll|yaw)([+-]\d+(?:\.\d+)?)", pose)
    if not found:
        raise ValueError(f"{pose!r} is not none or pitch/roll/yaw with signed degrees (pitch-20)")
    return Rotation.from_euler(_AXES[found[1]], float(found[2]), degrees=True).as_matrix()


def run(args, rotations: dict[str, np.ndarray]) -> None:
    poses = list(rotations)
    for case in selected_cases(args):
        centre = bone_points(case.defective, every=50).mean(axis=0)  # the bone's centroid: every pose turns about it
        for pose in poses:
            skull = GridTurn(rotations[pose], centre).skull(case.defective)  # the header only
            t0 = time.perf_counter()
            plane = find_mirror_plane(skull)
            result = rim_fit(skull, mirror_transform=plane.transform())
            seconds = time.perf_counter() - t0
            row = {"case_id": case.case_id, "defect": case.defect, "seed": case.seed, "pose": pose}
            row.update(score(result.implant, replace(case, defective=skull)))
            row.update(
                seconds=round(seconds, 2), cue=result.cue, plane_normal=[round(float(v), 4) for v in plane.normal]
            )
            row["messages"] = result.messages
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                case.case_id, case.defect, case.seed, pose, f"DSC {row['dsc']:.3f} HD95 {row['hd95']:.2f}", flush=True
            )


def summary(paths: list[str]) -> None:
    rows = [json.loads(line) for path in paths for line in open(path)]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["defect"], r["pose"])].append(r)
    print("| defect | pose | pairs | DSC mean (min) | HD95 mm mean (max) | ≥ 0.85 and ≤ 3 mm | mirror cue |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (defect, pose), g in sorted(groups.items()):
        dsc, hd = np.array([r["dsc"] for r in g]), np.array([r["hd95"] for r in g])
        passing = sum(r["dsc"] >= 0.85 and r["hd95"] <= 3.0 for r in g)
        cue = sum("mirror" in r["cue"] for r in g)
        print(
            f"| {defect} | {pose} | {len(g)} | {dsc.mean():.3f} ({dsc.min():.3f}) | {hd.mean():.2f} ({hd.max():.2f}) "
            f"| {passing} of {len(g)} | {cue} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_arguments(p, seeds="0")
    p.add_argument("--poses", default="none,pitch+20,pitch-20,roll+15,roll-15,yaw+25,yaw-25")
    p.add_argument("--out", help="JSON lines file (appended)")
    p.add_argument("--summary", nargs="+", help="print the table of these JSON lines files and stop")
    args = p.parse_args()
    if args.summary:
        summary(args.summary)
        return
    if not args.out:
        p.error("--out (a JSON lines file) is needed to run; --summary reads such files")
    try:
        rotations = {pose: pose_rotation(pose) for pose in args.poses.split(",")}
    except ValueError as error:
        p.error(f"--poses: {error}")
    run(args, rotations)


if __name__ == "__main__":
    main()
