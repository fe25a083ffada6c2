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
    assert not names & {"monai", "matplotlib", "scikit-learn", "sklearn", "tqdm"}  # training and reports only
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


@pytest.mark.parametrize("module", ["slicer.packaging", "slicer.pydeps"])  # its name in Slicer >= 5.11
def test_slicer_pip_ensure_is_called_without_its_own_dialog(monkeypatch, module):
    calls = []

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, requester=None):
        calls.append((requirements, prompt_install, requester))

    for name in ("slicer.packaging", "slicer.pydeps"):  # found by importing, not as an attribute of slicer
        found = types.SimpleNamespace(pip_ensure=pip_ensure) if name == module else types.SimpleNamespace()
        monkeypatch.setitem(sys.modules, name, found)
    install._slicerPipEnsure(["scipy>=1.10"])
    ((requirements, prompt, requester),) = calls
    assert [str(r) for r in requirements] == ["scipy>=1.10"] and prompt is False and requester == "SkullVAE"


# --- what pip may change while it installs ours ---------------------------------------------------
SLICER_OWNED = {"torch": "2.5.1+cu121", "numpy": "1.26.4", "SimpleITK": "2.4.0-g5c8f3a1", "vtk": None}


def _constraints(path) -> set[str]:
    return {line.strip() for line in Path(path).read_text().splitlines() if line.strip()}


def _installing(monkeypatch, packaging, installed):
    """setupPythonRequirements with Slicer's own installer (``packaging``: the module holding
    pip_ensure, None for Slicer <= 5.10); returns what slicer.util.pip_install saw."""
    for name in ("slicer.packaging", "slicer.pydeps"):
        monkeypatch.setitem(sys.modules, name, packaging if name == "slicer.packaging" else None)
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    monkeypatch.setattr(install, "readRequirements", lambda path=None: ["scipy>=1.10"])
    seen = {}

    def pip_install(args):  # Slicer <= 5.10: arguments given to `pip install` as they are
        seen["args"] = list(args)
        seen["constraints"] = _constraints(args[args.index("-c") + 1]) if "-c" in args else set()
        installed["scipy"] = "1.13.1"

    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    assert install.setupPythonRequirements(
        askConfirmation=False, torchLogic=TorchLogic(installed=True), versionOf=installed.get, log=lambda text: None
    )
    return seen


def test_installing_never_replaces_torch_or_slicers_numpy(monkeypatch):
    """A newer MONAI or SciPy needs a newer torch or numpy: pip must not swap the PyTorch extension's
    build (a CPU or driver-matched CUDA build) for PyPI's, nor Slicer's numpy; the installed versions
    are constraints, so pip picks versions of our packages that fit them."""
    seen, installed = {}, dict(SLICER_OWNED)

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, requester=None):
        seen["requirements"] = [str(r) for r in requirements]
        seen["constraints"] = _constraints(constraints) if constraints else set()
        installed["scipy"] = "1.13.1"

    _installing(monkeypatch, types.SimpleNamespace(pip_ensure=pip_ensure), installed)
    assert seen["requirements"] == ["scipy>=1.10"]
    # installed versions, kept as they are; a version pip would refuse ("2.4.0-g5c8f3a1") or a missing package is left out
    assert seen["constraints"] == {"torch==2.5.1+cu121", "numpy==1.26.4"}


def test_installing_on_slicer_without_pip_ensure_keeps_them_too(monkeypatch):
    seen = _installing(monkeypatch, None, dict(SLICER_OWNED))
    assert seen["args"][0] == "scipy>=1.10" and seen["constraints"] == {"torch==2.5.1+cu121", "numpy==1.26.4"}


def test_completion_imports_no_training_package():
    """Slicer only completes skulls, so its requirements leave out MONAI, matplotlib and scikit-learn
    (training and reports): the worker, every implant source and a model bundle's loading import none of them."""
    import subprocess

    code = (
        "import sys, SkullVAELib.cli.worker, SkullVAELib.cli.complete, SkullVAELib.workflows.complete, "
        "SkullVAELib.implant.sources, SkullVAELib.implant.learned.infer, SkullVAELib.implant.residual.infer, "
        "SkullVAELib.bundle.model_bundle, SkullVAELib.pipeline.completer\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'monai', 'matplotlib', 'sklearn'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "[]", done.stdout
