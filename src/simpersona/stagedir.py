"""A stage's output folder: written aside, marked complete last, renamed into place.

    part = begin(out, key, resume)       # OUT/../.partial/<name>/ (kept from a killed attempt
                                         #  with the same key when the stage resumes, e.g. VQ-VAE)
    ... the stage writes into part ...
    commit(part, out, stage, cfg)        # meta.json (the completion marker) last, then rename

A killed stage leaves the previous result or none, never a mix: `out` only ever appears whole,
with its `meta.json`. The marker records the resolved config, the library versions, every output
file's size and SHA-256 and, for the pipeline, the content digests of the stage's inputs, so two
runs that differ can be traced to the first stage whose inputs agree and outputs do not.

`SIMPERSONA_KILL_AT=<stage>` kills the process (SIGKILL) right before that stage's marker is
written: the kill/resume test uses it to stop a run inside a stage at the worst moment.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from simpersona.config import InputError, write_meta

MARKER = "meta.json"
PENDING = ".pending.json"
KILL_ENV = "SIMPERSONA_KILL_AT"
# errors of the disk rather than of the program (full, read-only, quota, I/O)
_DISK_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO, errno.EACCES, errno.EPERM)
# meta.json keys write_meta sets itself (a stage's own meta.json keeps its other keys in the marker)
_META_KEYS = {"stage", "simpersona_version", "python", "platform", "libraries", "written_at", "config"}


def partial_dir(out: Path) -> Path:
    """Where `out` is written before it is complete: a sibling `.partial/<name>/`."""
    out = Path(out)
    return out.parent / ".partial" / out.name


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The folder's meta.json when it is a completion marker (`complete: true`), else None."""
    try:
        meta = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("complete") is True else None


def require_complete(folder: Path, what: str) -> dict[str, Any]:
    """The marker of an input folder; an InputError naming it when the stage that writes it did not
    finish there."""
    marker = read_marker(folder)
    if marker is None:
        raise InputError(f"{folder}: no complete {what} output here (no meta.json marking it complete); "
                         f"run the {what} stage first")
    return marker


def check_output(out: Path, stage_folder: bool = True) -> None:
    """`out` can take a stage's output: not a file (nor under one) and, for a stage's folder, not a
    folder of something else (files but no meta.json)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: the output path is a file, not a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{parent}: the output path's parent is a file, not a folder")
            break
    if stage_folder and out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise InputError(f"{out}: the output folder holds files but no meta.json (not a SimPersona output); "
                         "choose another output folder or empty it")


def _writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise InputError(f"{path}: cannot write here ({e.strerror or e})") from None


def begin(out: Path, key: str, resume: bool = False) -> Path:
    """The empty partial folder to write `out` into; with `resume`, a killed attempt's folder with
    the same `key` (the resolved config) is kept so the stage resumes from its files."""
    check_output(out)
    part = partial_dir(out)
    pending = part / PENDING
    keep = resume and pending.exists() and pending.read_text() == key
    if part.exists() and not keep:
        shutil.rmtree(part)
    _writable(part)
    pending.write_text(key)
    return part


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes (streamed)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checkpoint_id(path: Path) -> dict[str, str]:
    """A checkpoint's name in every figure made with it: its resolved path and a short content hash
    (sha256 over its *.safetensors files in name order, 12 hex digits)."""
    path = Path(path).resolve()
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return {"path": str(path), "sha256": h.hexdigest()[:12]}


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """`{relative path: {"bytes", "sha256"}}` of every file under `folder` but meta.json, sorted."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel not in (MARKER, PENDING):
            out[rel] = {"bytes": p.stat().st_size, "sha256": file_hash(p)}
    return out


def digest(obj: Any) -> str:
    """SHA-256 of a JSON value (sorted keys): one hash for a manifest."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def relocate(obj: Any, part: Path, out: Path) -> Any:
    """`obj` with every string path under `part` pointing under `out` instead (summaries name where
    their files end up, not where they were written)."""
    if isinstance(obj, str) and obj.startswith(str(part)):
        return str(out) + obj[len(str(part)):]
    if isinstance(obj, dict):
        return {k: relocate(v, part, out) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relocate(v, part, out) for v in obj]
    return obj


def kill_point(stage: str) -> None:
    """SIGKILL this process when SIMPERSONA_KILL_AT names `stage` (the kill/resume test)."""
    if os.environ.get(KILL_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)


def commit(part: Path, out: Path, stage: str, cfg: Any, **extra: Any) -> dict[str, Any]:
    """Write the completion marker into `part` (last), then rename `part` to `out` (replacing a
    previous result). Returns the marker."""
    part, out = Path(part), Path(out)
    kill_point(stage)
    own = {}
    try:  # the stage's own meta.json (its summary, counts …) stays in the marker
        own = {k: v for k, v in json.loads((part / MARKER).read_text()).items() if k not in _META_KEYS}
        own = relocate(own, part, out)
    except (OSError, ValueError):
        pass
    (part / PENDING).unlink(missing_ok=True)
    for sub in sorted(part.rglob(MARKER)):  # inner meta.json files (a checkpoint's) name their final path
        try:
            if sub != part / MARKER and str(part) in (text := sub.read_text()):
                sub.write_text(json.dumps(relocate(json.loads(text), part, out), indent=2, default=str) + "\n")
        except ValueError:  # not JSON: left as the stage wrote it
            pass
    outputs = manifest(part)
    write_meta(part, stage, cfg, **{**own, **relocate(extra, part, out), "complete": True, "outputs": outputs,
                                    "outputs_digest": digest(outputs)})
    old = part.with_name(part.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(part, out)
    shutil.rmtree(old, ignore_errors=True)
    try:
        part.parent.rmdir()  # .partial/ when nothing else is pending
    except OSError:
        pass
    return json.loads((out / MARKER).read_text())


def run_atomic(out: Path, stage: str, cfg: Any, fn, resume: bool = False, **extra: Any) -> Any:
    """`fn(cfg, part)` into a partial folder, committed to `out` on success (a stage command)."""
    from simpersona.config import to_dict

    part = begin(out, json.dumps(to_dict(cfg), sort_keys=True, default=str), resume)
    with discard_on_error(part, keep=resume, out=Path(out)):
        result = relocate(fn(cfg, part), part, Path(out))
    commit(part, out, stage, cfg, **extra)
    return result


@contextlib.contextmanager
def discard_on_error(part: Path, keep: bool = False, out: Path | None = None):
    """Remove the partial folder when the stage fails (nothing half-written stays), unless `keep`
    (a stage that resumes from its files). A disk error that names no file (a full disk inside a
    library's writer) is re-raised as an InputError naming the output folder."""
    try:
        yield
    except BaseException as e:
        if not keep:
            shutil.rmtree(part, ignore_errors=True)
            try:
                part.parent.rmdir()
            except OSError:
                pass
        if isinstance(e, OSError) and e.filename is None and e.errno in _DISK_ERRORS:
            raise InputError(f"{out or part}: {e.strerror or e} (while the stage wrote its outputs)") from None
        raise
