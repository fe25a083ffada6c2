"""The module's sample data: the phantom that ships (made by the project, no download) and the real
SkullFix case fetched and verified by sha256, tested against a local http.server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import functools
import sys
import threading
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "SkullVAE"))

from SkullVAESlicerLib import nodes, sampledata  # noqa: E402

from SkullVAELib.core.errors import SkullVAEError  # noqa: E402


@pytest.fixture
def http_folder(tmp_path):
    """(folder, base URL): the standard library's http.server serving ``folder`` on 127.0.0.1."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _source(name: str):
    return next(s for s in sampledata.sampleSources() if s.sampleName == name)


def test_shipped_phantom_is_what_the_project_makes(tmp_path):
    from SkullVAELib.io.image import read_skull

    shipped = sampledata.phantomPath()
    assert shipped.is_file() and shipped.stat().st_size < 200_000
    fresh = sampledata.makePhantomSample(tmp_path / "fresh.nrrd")
    a, b = read_skull(shipped), read_skull(fresh)
    assert np.array_equal(a.mask, b.mask) and np.allclose(a.spacing, b.spacing) and np.allclose(a.origin, b.origin)
    algo, digest = slicer.util.extractAlgoAndDigest(_source("SkullVAEPhantom").checksum)
    assert slicer.util.computeChecksum(algo, str(shipped)) == digest == sampledata.PHANTOM_SHA256


def test_phantom_sample_needs_no_network_and_loads(scene, tmp_path):
    """Slicer's Sample Data module fetches with urllib.request.urlretrieve and checks the checksum:
    the phantom's file:// URI works offline."""
    source = _source("SkullVAEPhantom")
    assert source.uri.startswith("file://")
    copy = tmp_path / source.fileName
    urllib.request.urlretrieve(source.uri, copy)
    algo, digest = slicer.util.extractAlgoAndDigest(source.checksum)
    assert slicer.util.computeChecksum(algo, str(copy)) == digest
    volume = nodes.readVolume(scene, copy, source.nodeName)
    dims = volume.GetImageData().GetDimensions()
    assert dims == sampledata.PHANTOM_SHAPE and volume.GetImageData().GetScalarRange() == (0.0, 1.0)
    assert "Apache-2.0" in source.licence


def test_skullfix_sample_names_its_licence_and_a_stated_location():
    source = _source("SkullFix056")
    assert source.uri.startswith("https://github.com/skullvae/SlicerSkullVAE/releases/download/")
    assert "CC BY-NC-SA 4.0" in source.licence and "SkullFix" in source.licence and "non-commercial" in source.licence
    assert len(source.sha256) == 64 and source.checksum == f"SHA256:{source.sha256}"


def test_download_is_verified_against_a_local_server(http_folder, tmp_path):
    folder, url = http_folder
    data = sampledata.phantomPath().read_bytes()
    (folder / "phantom.nrrd").write_bytes(data)
    good = dataclasses.replace(_source("SkullVAEPhantom"), uri=f"{url}/phantom.nrrd")
    path = sampledata.fetchSample(good, tmp_path / "cache")
    assert path.read_bytes() == data


def test_a_wrong_checksum_is_refused_and_nothing_stays(http_folder, tmp_path):
    folder, url = http_folder
    (folder / "tampered.nrrd").write_bytes(sampledata.phantomPath().read_bytes() + b"x")
    bad = dataclasses.replace(_source("SkullVAEPhantom"), uri=f"{url}/tampered.nrrd")
    with pytest.raises(SkullVAEError, match="checksum mismatch"):
        sampledata.fetchSample(bad, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.skullfix
def test_real_skullfix_case_through_the_local_server(http_folder, tmp_path, skullfix_dir, scene):
    folder, url = http_folder
    (folder / "skullfix-056-defective.nrrd").write_bytes((skullfix_dir / "defective_skull" / "056.nrrd").read_bytes())
    source = dataclasses.replace(_source("SkullFix056"), uri=f"{url}/skullfix-056-defective.nrrd")
    path = sampledata.fetchSample(source, tmp_path / "cache")  # the registered sha256 is the real file's
    volume = nodes.readVolume(scene, path, source.nodeName)
    assert volume.GetImageData().GetDimensions()[:2] == (512, 512)


def test_registration_with_slicers_sample_data_module():
    calls = []

    class SampleDataLogic:  # the one static method the module uses, recording its arguments
        @staticmethod
        def registerCustomSampleDataSource(**kwargs):
            calls.append(kwargs)

    sampledata.registerSampleData(type("SampleData", (), {"SampleDataLogic": SampleDataLogic}))
    assert [c["sampleName"] for c in calls] == ["SkullVAEPhantom", "SkullFix056"]
    for call, source in zip(calls, sampledata.sampleSources(), strict=True):
        assert call["category"] == "SkullVAE" and call["checksums"] == source.checksum and call["uris"] == source.uri
        assert call["loadFileType"] == "VolumeFile" and Path(call["thumbnailFileName"]).is_file()


def test_phantom_sample_completes_without_a_model(scene, private_tmp):
    """The first click works: the phantom sample, no model, the Slicer logic; the implant is close to
    the bone the defect removed (what SkullVAETest checks inside Slicer, here under slicer-core)."""
    from SkullVAESlicerLib import results
    from SkullVAESlicerLib.logic import SkullVAELogic

    from SkullVAELib.data.defects import cranial_defect
    from SkullVAELib.data.phantoms import make_phantom

    complete = make_phantom(sampledata.PHANTOM_SEED, shape=sampledata.PHANTOM_SHAPE, spacing=(1.6,) * 3)
    removed = cranial_defect(complete, seed=sampledata.PHANTOM_SEED)[1].mask.sum() * 1.6**3
    volume = nodes.readVolume(scene, sampledata.phantomPath(), "phantom")
    logic = SkullVAELogic()
    try:
        seg = logic.process(volume, None, defect="cranial", timeout=600)
    finally:
        logic.cleanup()  # the warm worker and its folder go
    assert logic.lastResult["implantSource"] == "rimfit" and not logic.lastResult["gammaUsed"]
    assert 0.8 * removed < logic.lastResult["implantVolumeMm3"] < 1.25 * removed
    assert seg.GetSegmentation().GetNumberOfLayers() == 1 and results.hasSurface(seg, "Implant")
    assert list(private_tmp.iterdir()) == []
