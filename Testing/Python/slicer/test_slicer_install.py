"""Dependencies inside Slicer (SkullVAESlicerLib.install): version bounds enforced, one dialog, only
what inference needs. Slicer's installers (PyTorchUtils, pip_ensure, the dialog) are replaced by
recorders: the Slicer application is not available here; the decisions are what is tested."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer")
tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "SkullVAE"))

from SkullVAESlicerLib import install  # noqa: E402


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_slicer_installs_only_what_inference_needs():
    names = {_name(r) for r in install.readRequirements()}
    assert not names & {"matplotlib", "scikit-learn", "sklearn", "tqdm"}  # training and reports only
    assert {"psutil", "packaging", "safetensors", "slicerio", "scipy"} <= names
    assert not names & install.NEVER_INSTALL


def test_bounds_agree_with_the_library():
    """The library's pyproject bounds and the Slicer requirements name the same lower bounds."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    library = {_name(r): r.replace(" ", "") for r in project}
    for requirement in install.readRequirements():
        name = _name(requirement)
        if name in library:
            assert library[name] == requirement.replace(" ", ""), (requirement, library[name])


VERSIONS = {"monai": "1.2.0", "scipy": "1.13.1", "safetensors": None, "torch": "2.0.1"}


def _version(name):
    return VERSIONS.get(name, "99.0")


def test_an_old_or_missing_package_is_not_accepted():
    todo = install.unsatisfiedRequirements(["monai>=1.3", "scipy>=1.10", "safetensors>=0.4", "x>=1"], _version)
    assert todo == ["monai>=1.3", "safetensors>=0.4"]
    assert install.unsatisfiedRequirements(["weird>=1"], lambda name: "not-a-version") == ["weird>=1"]
    plan = install.planInstall(torchInstalled=True, requirements=["monai>=1.3"], versionOf=_version)
    assert plan["torch"]  # torch 2.0.1 is below the bound: updated, not accepted
    assert plan["packages"] == ["monai>=1.3"] and "PyTorch" in plan["message"] and "monai>=1.3" in plan["message"]
    ok = install.planInstall(torchInstalled=True, requirements=["scipy>=1.10"], versionOf=_version)
    assert ok == {"torch": True, "packages": [], "message": ok["message"]}
    nothing = install.planInstall(True, ["scipy>=1.10"], versionOf=lambda name: "3.0")
    assert nothing["message"] == "" and not nothing["torch"]


class TorchLogic:
    def __init__(self, installed=False):
        self.installed, self.calls = installed, []

    def torchInstalled(self):
        return self.installed

    def installTorch(self, askConfirmation=True, torchVersionRequirement=None):
        self.calls.append((askConfirmation, torchVersionRequirement))
        return types.SimpleNamespace(__version__="2.13.0")


def test_one_dialog_then_no_more_questions(monkeypatch):
    asked, ensured = [], []
    installed = dict(VERSIONS)
    monkeypatch.setattr(install, "readRequirements", lambda path=None: ["monai>=1.3", "safetensors>=0.4"])

    def ensure(requirements):
        ensured.append(list(requirements))
        installed.update({"monai": "1.5.0", "safetensors": "0.5.0"})

    torch = TorchLogic(installed=False)
    ok = install.setupPythonRequirements(
        confirm=lambda text: asked.append(text) or True,
        torchLogic=torch,
        pipEnsure=ensure,
        versionOf=lambda name: installed.get(name, "99.0"),
        log=lambda text: None,
    )
    assert ok and len(asked) == 1 and "PyTorch" in asked[0] and "monai>=1.3" in asked[0]
    assert torch.calls == [(False, install.TORCH_REQUIREMENT)]  # the PyTorch extension does not ask again
    assert ensured == [["monai>=1.3", "safetensors>=0.4"]]


def test_declined_installs_nothing(monkeypatch):
    monkeypatch.setattr(install, "readRequirements", lambda path=None: ["monai>=1.3"])
    torch, ensured = TorchLogic(installed=False), []
    with pytest.raises(RuntimeError, match="declined"):
        install.setupPythonRequirements(
            confirm=lambda text: False, torchLogic=torch, pipEnsure=ensured.append, versionOf=_version
        )
    assert torch.calls == [] and ensured == []


def test_still_too_old_after_installing_is_an_error(monkeypatch):
    monkeypatch.setattr(install, "readRequirements", lambda path=None: ["monai>=1.3"])
    with pytest.raises(RuntimeError, match="still missing or too old: monai>=1.3"):
        install.setupPythonRequirements(
            askConfirmation=False,
            torchLogic=TorchLogic(installed=True),
            pipEnsure=lambda reqs: None,
            versionOf=lambda name: {"monai": "1.0", "torch": "2.13.0"}.get(name),
            log=lambda text: None,
        )


def test_slicer_pip_ensure_is_called_without_its_own_dialog(monkeypatch):
    calls = []

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, requester=None):
        calls.append((requirements, prompt_install, requester))

    monkeypatch.setattr(slicer, "packaging", types.SimpleNamespace(pip_ensure=pip_ensure), raising=False)
    install._slicerPipEnsure(["monai>=1.3"])
    ((requirements, prompt, requester),) = calls
    assert [str(r) for r in requirements] == ["monai>=1.3"] and prompt is False and requester == "SkullVAE"
