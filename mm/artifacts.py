"""W&B model artifacts of a run: what one holds, staging it for upload, reading one back as a run folder.

An artifact of type ``model`` (``Tracker.log_model``, turned on by ``wandb.log_model=true``) holds
one checkpoint of a run, laid out as a run folder with that one checkpoint::

    config.yaml  classes.json  metrics.jsonl  wandb_id.txt     the run's files at the end of training
    checkpoints/step-00000040/model.safetensors
    checkpoints/step-00000040/manifest.json                    step, size and sha256 of the weights

The training state (``state.pt``: optimizer, RNG) stays out: an artifact is for predicting and
evaluating, not for resuming. ``resolve_run`` turns a reference such as
``artifact:mm/model-1a2b3c4d:best`` (or ``wandb-artifact://entity/mm/model-1a2b3c4d:v3``) into a
folder that ``mm.analysis.evaluation.load_run`` reads: it downloads that version into a cache and points
``checkpoints/best`` and ``checkpoints/last`` at its one checkpoint, whichever alias named it. A
run folder passes through (an artifact's folder fetched otherwise, e.g. by ``wandb artifact get``,
gets the same two links). Downloading needs a W&B server: with no API key, in offline mode, or
when the server accepts no connection within ``mm.tracking.PROBE_TIMEOUT_S``, it fails at once
with a message that says which.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from mm.run.checkpoint import WEIGHTS

SCHEMES = ("wandb-artifact://", "artifact:")
CACHE_ENV = "MM_ARTIFACT_CACHE"  # where downloads go; default ~/.cache/mm/artifacts


@dataclass(frozen=True)
class ArtifactRef:
    """An artifact version: ``[entity/]project/name:version``, the version an alias or ``v<n>``."""

    entity: str | None
    project: str
    name: str
    version: str

    @property
    def path(self) -> str:
        """The name ``wandb.Api().artifact`` takes."""
        return "/".join(p for p in (self.entity, self.project, f"{self.name}:{self.version}") if p)


def parse_ref(ref: str) -> ArtifactRef | None:
    """The artifact that ``ref`` names, or None when it is no artifact reference (a path).

    Raises:
        ValueError: ``ref`` starts like a reference but is malformed; the message shows the form.
    """
    scheme = next((s for s in SCHEMES if ref.startswith(s)), None)
    if scheme is None:
        return None
    where, colon, version = ref[len(scheme):].rpartition(":")
    parts = where.split("/")
    if not colon or not version or "/" in version or len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"{ref!r} is not an artifact reference: write {scheme}[entity/]project/name:alias, "
                         f"e.g. {scheme}mm/model-1a2b3c4d:best (the alias or version is required)")
    *entity, project, name = parts
    return ArtifactRef(entity[0] if entity else None, project, name, version)


def resolve_run(ref: str | Path, cache: Path | None = None) -> Path:
    """A run folder for ``ref``: a folder as it is, an artifact reference downloaded.

    Args:
        ref: A run folder, or ``artifact:[entity/]project/name:alias`` (``wandb-artifact://`` alike).
        cache: Where artifacts are downloaded, one folder per version; default ``$MM_ARTIFACT_CACHE``,
            else ``~/.cache/mm/artifacts``.

    Raises:
        ValueError: a malformed reference.
        FileNotFoundError: ``ref`` is neither a reference nor a folder.
        ConnectionError: no API key, offline mode, or no connection to the W&B server.
        LookupError: W&B could not give the artifact (no such artifact, alias or access), or it
            is not an mm model.
    """
    parsed = parse_ref(str(ref))
    if parsed is None:
        path = Path(ref)
        if not path.is_dir():
            raise FileNotFoundError(f"{ref}: no such run folder (a W&B model artifact is written "
                                    f"{SCHEMES[1]}[entity/]project/name:alias)")
        if not any((path / "checkpoints" / a).exists() for a in ("best", "last")) and any(path.glob("checkpoints/step-*")):
            link_aliases(path)  # an artifact downloaded by other means, e.g. `wandb artifact get`
        return path
    return download(parsed, cache or Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache/mm/artifacts"))


def run_argument(text: str) -> Path:
    """``resolve_run`` as an argparse ``type``: its errors become usage errors (exit 2) with their message."""
    try:
        return resolve_run(text)
    except (ValueError, OSError, LookupError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def download(ref: ArtifactRef, cache: Path) -> Path:
    """Downloads an artifact version to ``cache/<entity>/<project>/<name>/<version>/``, a run folder.

    Raises:
        ConnectionError: no API key, offline mode, or no connection to the W&B server.
        LookupError: W&B could not give the artifact, or it is not an mm model.
    """
    from mm.tracking import check_server, resolve_mode

    mode = resolve_mode("auto")
    if mode != "online":
        why = (f"WANDB_MODE={os.environ['WANDB_MODE']}" if os.environ.get("WANDB_MODE")
               else "no W&B API key (set WANDB_API_KEY or run `wandb login`)")
        raise ConnectionError(f"cannot download {ref.path}: {why}; a downloaded artifact's folder "
                              "can be given as a path instead")
    import wandb

    try:
        check_server(wandb.setup().settings)
    except ConnectionError as err:
        raise ConnectionError(f"cannot download {ref.path}: {err}") from None
    try:
        artifact = wandb.Api().artifact(ref.path, type="model")
        root = cache / artifact.entity / artifact.project / artifact.name.partition(":")[0] / artifact.version
        artifact.download(root=str(root))
    except Exception as err:  # wandb's own errors: no such artifact, alias, type or access
        raise LookupError(f"cannot download {ref.path}: {err}") from None
    link_aliases(root)
    return root


def link_aliases(root: Path) -> None:
    """Points ``checkpoints/best`` and ``checkpoints/last`` of a downloaded artifact at its one checkpoint.

    Raises:
        LookupError: ``root`` does not hold exactly one ``checkpoints/step-*/model.safetensors``.
    """
    steps = sorted(p for p in (root / "checkpoints").glob("step-*") if (p / WEIGHTS).is_file())
    if len(steps) != 1 or not (root / "config.yaml").is_file():
        raise LookupError(f"{root}: not an mm model artifact (config.yaml and one "
                          f"checkpoints/step-*/{WEIGHTS} expected; {len(steps)} checkpoints found)")
    for alias in ("best", "last"):
        link = root / "checkpoints" / alias
        if not link.is_symlink():
            link.symlink_to(steps[0].name)
