"""Import spandrel (the optional `models` extra) so that its SR architectures load even without torchvision.

Why a guard: spandrel imports torchvision at import time, but only two of its architectures use it
(LaMa inpainting and RestoreFormer faces, for `rotate` and `normalize`), and ribsr runs neither. A CPU-only
torch often sits beside a torchvision built for another torch (PyPI's torchvision pins a CUDA torch; its
compiled ops fail to register: "operator torchvision::nms does not exist"), or beside none at all. Then
`import spandrel` fails for every architecture.

What the guard does, and only when `import torchvision` fails: it drops the half-imported torchvision modules,
puts a small stand-in under the three names spandrel imports from (`torchvision`,
`torchvision.transforms`, `torchvision.transforms.functional`) while spandrel is imported, then removes it
again, so the rest of the process sees torchvision exactly as before. Any function spandrel took from the
stand-in raises `TorchvisionUnavailable` (naming the original import error) when called. With a working
torchvision nothing is replaced: users whose torch and torchvision match get plain spandrel.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from ribsr_cli.errors import CheckpointError, RibsrError

EXTRA_HINT = 'install the optional extra with your torch pinned: pip install torch==<your torch> "ribsr[models]"'
STAND_IN_MODULES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


class TorchvisionUnavailable(RibsrError, RuntimeError):
    """A spandrel architecture needed torchvision, which could not be imported beside this torch."""


class _Unavailable:
    """What the stand-in hands out for any name: calling it, or reading from it, says why it cannot work."""

    def __init__(self, name: str, reason: str) -> None:
        self._name, self._reason = name, reason

    def _fail(self) -> TorchvisionUnavailable:
        return TorchvisionUnavailable(
            f"{self._name} is needed by this architecture (spandrel's LaMa or RestoreFormer), but "
            f"torchvision cannot be imported here ({self._reason}); install a torchvision built for this torch")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._fail()

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise self._fail()


def _stand_in(name: str, reason: str) -> types.ModuleType:
    module = types.ModuleType(name, f"ribsr stand-in: torchvision failed to import ({reason})")
    module.__path__ = []  # a package, so `import torchvision.transforms` looks in sys.modules
    module.__ribsr_stand_in__ = True  # type: ignore[attr-defined]
    module.__getattr__ = lambda attr: _Unavailable(f"{name}.{attr}", reason)  # type: ignore[method-assign]
    return module


def torchvision_problem() -> str | None:
    """None when torchvision imports (or is already imported); else the one-line reason it does not."""
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or RuntimeError from ops built for another torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # the half-imported package must not shadow the stand-in
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"{type(exc).__name__}: {text}"[:160]
    return None


def import_spandrel(path: object = "") -> types.ModuleType:
    """The spandrel module; a CheckpointError naming the extra when it is not installed.

    `path` is the checkpoint being loaded, for the error line.
    """
    if "spandrel" in sys.modules and sys.modules["spandrel"] is not None:
        return sys.modules["spandrel"]
    problem = torchvision_problem()
    installed: list[str] = []
    if problem is not None:
        for name in STAND_IN_MODULES:
            sys.modules[name] = _stand_in(name, problem)
            installed.append(name)
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]  # type: ignore[attr-defined]
        sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]  # type: ignore[attr-defined]
    try:
        import spandrel
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise CheckpointError(path, f"not an SST checkpoint, and loading other architectures needs spandrel "
                                    f"({missing} is missing): {EXTRA_HINT}") from None
    except Exception as exc:  # noqa: BLE001 - a broken spandrel install: one line, not a traceback
        raise CheckpointError(path, f"spandrel failed to import ({type(exc).__name__}: {exc}); {EXTRA_HINT}") from None
    finally:
        for name in installed:  # later `import torchvision` elsewhere fails as it did before, not silently
            if getattr(sys.modules.get(name), "__ribsr_stand_in__", False):
                del sys.modules[name]
    return spandrel


def spandrel_available() -> bool:
    """Whether the `models` extra is usable here (for tests and `ribsr info`)."""
    try:
        import_spandrel()
    except CheckpointError:
        return False
    return True
