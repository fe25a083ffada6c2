"""Hostile inputs (issue 10 items 3, 5, 6, 7, 10, 11, 15): files that lie about their size,
never end, are truncated, or a model bundle that is nested, mistyped or mixed. Every test
builds its bad file itself and expects a one-line SkullVAEError, quickly, allocating nothing."""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import finishes
from safetensors.torch import load_file
from safetensors.torch import save_file as st_save_file

from SkullVAELib.bundle.model_bundle import ModelBundle, new_bundle
from SkullVAELib.core import limits
from SkullVAELib.core.config import PRESETS
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.dataset import file_content_hash
from SkullVAELib.io.image import SkullImage, read_skull, write_mask

CFG = PRESETS["test"]


def _one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(SkullVAEError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


pytestmark = pytest.mark.usefixtures("default_limits")


def _small_skull() -> SkullImage:
    mask = np.zeros((24, 20, 16), dtype=bool)
    mask[4:20, 4:16, 4:12] = True
    mask[8:16, 8:12, 6:10] = False
    return SkullImage(mask, origin=(1.0, 2.0, 3.0), spacing=(1.0, 1.5, 2.0))


# --- item 5: sizes from headers, before allocating ---------------------------------------
def _nrrd_header(path: Path, sizes: str, extra: str = "") -> Path:
    path.write_bytes(f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {sizes}\nencoding: gzip\n{extra}\n".encode())
    with open(path, "ab") as stream:
        stream.write(gzip.compress(b"\0" * 64))
    return path


def test_tiny_nrrd_declaring_2000_cubed_is_refused_from_its_header(tmp_path):
    path = _nrrd_header(tmp_path / "huge.nrrd", "2000 2000 2000")
    assert path.stat().st_size < 300
    message = finishes(lambda: _one_line_error(read_skull, path))
    assert "huge.nrrd" in message and "8,000,000,000 voxels exceeds the limit" in message


def test_segmentation_header_declaring_2000_cubed_is_refused(tmp_path):
    from SkullVAELib.io.segfile import read_segmentation

    path = _nrrd_header(tmp_path / "huge.seg.nrrd", "2000 2000 2000")
    assert "exceeds the limit" in finishes(lambda: _one_line_error(read_segmentation, path))


def _nifti_gz_declaring(path: Path, size: int) -> Path:
    """A .nii.gz whose header says size³ uint8 voxels, holding only a few (a tiny 'bomb')."""
    small = tmp = path.with_name("small.nii")
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt8), str(tmp))
    data = bytearray(small.read_bytes())
    struct.pack_into("<hhh", data, 42, size, size, size)  # dim[1..3]
    small.unlink()
    path.write_bytes(gzip.compress(bytes(data)))
    return path


def test_gzip_of_a_1024_cubed_volume_is_refused_by_memory_estimate(tmp_path):
    path = _nifti_gz_declaring(tmp_path / "big.nii.gz", 1024)
    message = finishes(lambda: _one_line_error(read_skull, path))
    assert "GB limit" in message and "--max-memory-gb" in message


def test_limits_can_be_lowered_or_raised(tmp_path, monkeypatch):
    path = tmp_path / "s.nrrd"
    write_mask(_small_skull(), path)
    monkeypatch.setenv(limits.ENV_MAX_VOXELS, "1000")
    assert "exceeds the limit of 1,000 voxels" in _one_line_error(read_skull, path)
    limits.set_limits(max_voxels=10**6)  # the CLI flag wins over the environment
    assert read_skull(path).shape == (24, 20, 16)
    with pytest.raises(SkullVAEError, match="positive"):
        limits.set_limits(max_memory_gb=0)


def test_network_estimates_scale_with_grid_and_latent():
    paper = limits.network_memory_bytes((256, 256, 128), (32, 64, 64, 128, 128, 256), 32)
    assert 0.1e9 < paper < 1e9  # the paper network fits comfortably
    with pytest.raises(SkullVAEError, match="exceeds the limit"):
        limits.check_network((2048, 2048, 2048), (32, 64, 64, 128, 128, 256), 32)
    with pytest.raises(SkullVAEError, match="GB limit"):
        limits.check_network((1024, 1024, 512), (32, 64, 64, 128, 128, 256), 32)
    with pytest.raises(SkullVAEError, match="GB limit"):
        limits.check_network((64, 64, 32), (8, 16, 32, 64, 64), 10**9)


# --- item 6: only regular files, bounded reads ----------------------------------------------
def _mhd(path: Path, data_file: str) -> Path:
    path.write_text(
        f"ObjectType = Image\nNDims = 3\nDimSize = 64 64 64\nElementType = MET_UCHAR\nElementDataFile = {data_file}\n"
    )
    return path


def test_mhd_pointing_at_dev_zero_is_refused_while_hashing_and_reading(tmp_path):
    path = _mhd(tmp_path / "000.mhd", "/dev/zero")
    assert "not a regular file" in finishes(lambda: _one_line_error(file_content_hash, path))
    assert "not a regular file" in finishes(lambda: _one_line_error(read_skull, path))


def test_nrrd_with_a_detached_fifo_data_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "data.raw")
    path = tmp_path / "000.nrrd"
    path.write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 8 8 8\nencoding: raw\ndata file: data.raw\n\n")
    assert "FIFO" in finishes(lambda: _one_line_error(read_skull, path))
    assert "FIFO" in finishes(lambda: _one_line_error(file_content_hash, path))


@pytest.mark.parametrize("key", ["DATA FILE", "Data File", "DataFile"])
def test_nhdr_data_file_field_in_any_case_is_checked(tmp_path, key):
    """teem reads field names in any case: "DATA FILE: /dev/zero" must not slip past the checks."""
    os.mkfifo(tmp_path / "data.raw")
    fifo, zero = tmp_path / "fifo.nhdr", tmp_path / "zero.nhdr"
    header = "NRRD0004\ntype: uchar\ndimension: 3\nsizes: 16 16 16\nspacings: 1 1 1\nencoding: raw\n"
    fifo.write_text(header + f"{key}: data.raw\n")
    zero.write_text(header + f"{key}: /dev/zero\n")
    assert "not a regular file" in _one_line_error(file_content_hash, zero)  # hashed only the header before
    assert "FIFO" in _one_line_error(file_content_hash, fifo)
    assert "FIFO" in finishes(lambda: _one_line_error(read_skull, fifo), seconds=10)


@pytest.mark.parametrize("damage", ["truncated", "nan pixdim"])
def test_analyze_nifti_pair_is_refused(tmp_path, damage):
    """A .hdr + .img pair skipped every NIfTI check (a truncated .img read half empty, NaN pixdim as 1 mm)."""
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((8, 8, 8), np.uint8)), str(tmp_path / "pair.hdr"))
    if damage == "truncated":
        img = tmp_path / "pair.img"
        img.write_bytes(img.read_bytes()[:100])
    else:
        head = bytearray((tmp_path / "pair.hdr").read_bytes())
        head[80:84] = struct.pack("<f", float("nan"))
        (tmp_path / "pair.hdr").write_bytes(bytes(head))
    for name in ("pair.hdr", "pair.img"):
        assert "convert it to .nii.gz" in _one_line_error(read_skull, tmp_path / name)


def test_fifo_named_like_an_image_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "000.nrrd"
    os.mkfifo(fifo)
    assert "FIFO" in finishes(lambda: _one_line_error(file_content_hash, fifo))
    assert "FIFO" in finishes(lambda: _one_line_error(read_skull, fifo))


def test_hash_of_regular_mhd_covers_header_and_data(tmp_path):
    path = tmp_path / "a.mhd"
    write_mask(_small_skull(), path, compress=False)
    first = file_content_hash(path)
    raw = next(p for p in tmp_path.iterdir() if p.suffix in (".raw", ".zraw"))
    raw.write_bytes(b"\1" + raw.read_bytes()[1:])
    assert file_content_hash(path) != first


# --- item 7: truncated or corrupt compressed streams ---------------------------------------
@pytest.mark.parametrize("name", ["skull.nii.gz", "skull.nii"])
def test_truncated_nifti_is_refused(tmp_path, name):
    path = tmp_path / name
    write_mask(_small_skull(), path)
    assert read_skull(path).mask.sum() == _small_skull().mask.sum()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    assert "truncated" in _one_line_error(read_skull, path)
    # a batch's memory estimate reads the header only; the case that reads the voxels refuses it
    from SkullVAELib.io.inputs import read_information

    assert read_information(path, verify_voxels=False).GetSize() == _small_skull().shape
    assert "truncated" in _one_line_error(read_information, path)


# --- items 3, 11, 15: model bundles ---------------------------------------------------------
@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    bundle = new_bundle(CFG, aggregated=True, seed=0)
    rng = np.random.default_rng(0)
    d = CFG.latent_size
    bundle.set_centroids(
        {"complete": np.zeros(d), "cranial": rng.normal(size=d), "facial": rng.normal(size=d)},
        {
            "defect_classifier": {
                "kind": "logistic_regression",
                "classes": ["cranial", "facial"],
                "mean": [0.0] * d,
                "scale": [1.0] * d,
                "coef": [[0.5] * d],
                "intercept": [0.0],
            }
        },
    )
    bundle.save(tmp_path / "m")
    return tmp_path / "m"


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_bundle_loads_with_its_classifier(bundle_dir):
    assert ModelBundle.load(bundle_dir).completion_info["defect_classifier"]["classes"] == ["cranial", "facial"]


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda d: d.__setitem__("heads", [1, 2]), "'heads' must be an object"),
        (lambda d: d["network"].__setitem__("latent_size", 1e400), "latent_size must be a positive integer"),
        (lambda d: d["network"].__setitem__("latent_size", 10**9), "GB limit"),
        (lambda d: d["network"].__setitem__("grid", [2048, 2048, 2048]), "exceeds the limit"),
        (lambda d: d["network"].__setitem__("grid", [32, 32, True]), "grid must be a positive integer"),
        (lambda d: d["network"].__setitem__("channels", "8,16"), "channels must be a list"),
        (lambda d: d["heads"]["decoder"].__setitem__("out_channels", 10**12), "out_channels must be 1 or 2"),
    ],
)
def test_bad_config_json_is_one_line(bundle_dir, edit, needle):
    text = (bundle_dir / "config.json").read_text().replace('"latent_size": 8', '"latent_size": 1e400')
    if "1e400" in needle or "latent_size must" in needle:
        (bundle_dir / "config.json").write_text(text)  # JSON itself cannot hold 1e400 as a number
    else:
        _edit_json(bundle_dir / "config.json", edit)
    message = finishes(lambda: _one_line_error(ModelBundle.load, bundle_dir))
    assert "config.json" in message and needle in message, message


def test_deeply_nested_json_is_one_line(bundle_dir):
    (bundle_dir / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in _one_line_error(ModelBundle.load, bundle_dir)


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("mean", [0.0] * 3, "mean has shape (3,)"),
        ("scale", [0.0] * 8, "scale must be > 0"),
        ("coef", [[float("nan")] * 8], None),  # NaN cannot be JSON: written as null -> rejected
        ("classes", ["cranial", "cranial"], "classes must be distinct"),
    ],
)
def test_bad_classifier_is_one_line(bundle_dir, field, value, needle):
    path = bundle_dir / "completion.json"
    _edit_json(path, lambda d: d["info"]["defect_classifier"].__setitem__(field, value))
    message = _one_line_error(ModelBundle.load, bundle_dir)
    assert "completion.json" in message and (needle is None or needle in message), message


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.float64])
def test_weights_of_the_wrong_dtype_are_refused(bundle_dir, dtype):
    path = bundle_dir / "encoder.safetensors"
    tensors = load_file(str(path))
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key] = tensors[key].to(dtype)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    st_save_file(tensors, str(path), metadata=metadata)
    message = _one_line_error(ModelBundle.load, bundle_dir)
    assert f"dtype {dtype}" in message and "encoder.safetensors" in message


def test_completion_json_linked_to_a_device_is_refused(bundle_dir):
    (bundle_dir / "completion.json").unlink()
    (bundle_dir / "completion.json").symlink_to("/dev/urandom")
    message = finishes(lambda: _one_line_error(ModelBundle.load, bundle_dir))
    assert "not a regular file" in message


def test_oversized_completion_json_is_refused_without_reading_it_all(bundle_dir, monkeypatch):
    import SkullVAELib.bundle.checks as checks

    monkeypatch.setattr(checks, "MAX_JSON_BYTES", 1000)
    assert "too large" in _one_line_error(ModelBundle.load, bundle_dir)


def test_interrupted_save_leaves_a_refused_mixed_bundle(bundle_dir, monkeypatch):
    """Item 3: a crash after encoder.safetensors is replaced must not yield a working mixed model."""
    import SkullVAELib.bundle.model_bundle as bundle_module

    real = bundle_module.atomic_write_bytes
    calls = []

    def crash_after_first(path, data):
        if calls:
            raise KeyboardInterrupt
        calls.append(path)
        real(path, data)

    monkeypatch.setattr(bundle_module, "atomic_write_bytes", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        new_bundle(CFG, aggregated=True, seed=1).save(bundle_dir)
    monkeypatch.undo()
    message = _one_line_error(ModelBundle.load, bundle_dir)
    assert "not a SkullVAE model bundle" in message or "another save" in message
    # even with an old config.json restored, parts of two saves are refused
    old = new_bundle(CFG, aggregated=True, seed=2)
    old.save(bundle_dir / ".." / "old")
    (bundle_dir / "config.json").write_bytes((bundle_dir / ".." / "old" / "config.json").read_bytes())
    assert "another save" in _one_line_error(ModelBundle.load, bundle_dir)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600)])
def test_bundle_files_get_the_umask_mode(tmp_path, umask, expected):
    """Item 15: safetensors writes 0600; a bundle must be readable by others under umask 022."""
    previous = os.umask(umask)
    try:
        new_bundle(CFG, aggregated=True, seed=0).save(tmp_path / "m")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert modes and all(mode == expected for mode in modes.values()), modes
