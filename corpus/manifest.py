"""Repository manifest: which repositories the corpus job clones, at which ref, which files.

A manifest is input, not trusted configuration: ``corpus.clone`` validates every URL and ref
before git sees it (scheme allow-list, no option-looking values, local paths confined to the
allowed roots). ``local_roots_for`` computes those roots for a job: the configured list, or by
default the working directory and the manifest file's directory.
"""

from __future__ import annotations

import hashlib
import os
import re
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Repository(BaseModel):
    """One manifest entry. ``url``: https, ssh, file:// or a local path (plain dir = snapshot)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    url: str
    ref: str | None = None  # branch, tag or 40-hex commit; None = remote default branch
    include: list[str] = Field(default_factory=list)  # fnmatch globs on the relative path
    exclude: list[str] = Field(default_factory=list)
    license: str | None = None  # SPDX override
    submodules: bool = False

    @model_validator(mode="after")
    def _unicode_text(self) -> "Repository":
        """Every string is encodable text: a YAML ``"\\udcff"`` escape gives a lone surrogate, which
        would otherwise fail later (hashing, JSON, Arrow) with an error naming no entry."""
        for field in ("name", "url", "ref", "license", "include", "exclude"):
            value = getattr(self, field)
            for text in value if isinstance(value, list) else [value]:
                if text is not None and not text.isascii():
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError:
                        raise ValueError(f"{field} {text!r} is not valid Unicode text (a lone surrogate)") from None
        return self


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repositories: list[Repository]

    @model_validator(mode="after")
    def _unique_names(self) -> "Manifest":
        seen: set[str] = set()
        for repo in self.repositories:
            if repo.name in seen:
                raise ValueError(f"duplicate repository name {repo.name!r}")
            seen.add(repo.name)
        return self


# ``<transport>::<address>`` (git remote-helper syntax, e.g. ``ext::``, ``fd::``).
_HELPER_URL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::")
_SCHEME_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SCP_URL = re.compile(r"^[^@/:\s]+@[^@/:\s]+:")  # user@host:path (ssh)


def is_local_url(url: str) -> bool:
    """Whether ``url`` names a local path (neither ``scheme://``, ``user@host:path``, a remote
    helper ``x::``, nor an option-looking ``-...`` value, which are never treated as paths)."""
    return not (url.startswith("-") or _HELPER_URL.match(url) or _SCHEME_URL.match(url) or _SCP_URL.match(url))


def _is_local(url: str) -> bool:
    return is_local_url(url)


def local_roots_for(manifest_path: str | Path, configured: Sequence[str] | None = None) -> list[str]:
    """Directories that local-path (and ``file://``) repositories must lie under.

    ``configured`` (a config field, e.g. ``clone.local_roots``) wins when given; otherwise the
    current working directory and the manifest file's directory. Relative entries resolve
    against the working directory. Roots under the working directory are returned relative to
    it (``"."`` for the working directory itself), like the URLs the corpus job ships to
    workers, so that on every node they resolve against that node's working directory.
    """
    cwd = os.getcwd()
    if configured is None:
        roots = [cwd, str(Path(manifest_path).resolve().parent)]
    else:
        roots = [os.path.abspath(os.path.expanduser(r)) for r in configured]
    out: list[str] = []
    for root in roots:
        rel = os.path.relpath(root, cwd)
        entry = root if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel
        if entry not in out:
            out.append(entry)
    return out


def load_manifest(path: str | Path) -> Manifest:
    """Read a manifest YAML; relative local paths resolve against the manifest's directory."""
    return Manifest.model_construct(repositories=list(iter_manifest(path)))


def iter_manifest(path: str | Path) -> Iterator[Repository]:
    """The manifest's repositories one at a time, each validated as it is read.

    Memory stays per entry, not per manifest: the YAML is composed one ``repositories`` item at a
    time (anchors and merge keys still work), so a 100k-entry manifest never exists as one tree
    of YAML nodes, dicts and models. Errors are ``ValueError("manifest PATH: ...")`` like
    ``Manifest.model_validate``'s (unknown or missing keys, bad values, duplicate names); a
    duplicate name is found from 8-byte name hashes once the whole file is read, so a caller
    that stores entries as they come must not use them before the iterator is exhausted.
    Relative local paths resolve against the manifest's directory.
    """
    path = Path(path)
    base = path.resolve().parent
    hashes = array("q")
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise ValueError(f"manifest {path}: {exc}") from exc
    with stream:
        loader = yaml.SafeLoader(stream)
        try:
            for index, data in _entries(loader, path):
                try:
                    repo = Repository.model_validate(data)
                except ValidationError as exc:  # each field and what is wrong with it, no library links
                    why = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}"
                                    for e in exc.errors())
                    raise ValueError(f"manifest {path}: repositories.{index}: {why}") from exc
                except Exception as exc:
                    raise ValueError(f"manifest {path}: repositories.{index}: {exc}") from exc
                if _is_local(repo.url) and not os.path.isabs(repo.url):
                    repo.url = str((base / repo.url).resolve())
                hashes.append(_name_hash(repo.name))
                yield repo
        except yaml.YAMLError as exc:
            raise ValueError(f"manifest {path}: {exc}") from exc
        finally:
            loader.dispose()
    _check_unique(path, hashes)


def _entries(loader: yaml.SafeLoader, path: Path) -> Iterator[tuple[int, Any]]:
    """(index, plain data) of each item of the document's ``repositories`` sequence."""
    loader.get_event()  # StreamStart
    if loader.check_event(yaml.StreamEndEvent):
        raise ValueError(f"manifest {path}: 1 validation error for Manifest\nrepositories\n  Field required")
    loader.get_event()  # DocumentStart
    if not loader.check_event(yaml.MappingStartEvent):
        top = loader.construct_document(loader.compose_node(None, None))
        if top is None:
            raise ValueError(f"manifest {path}: 1 validation error for Manifest\nrepositories\n  Field required")
        raise ValueError(f"manifest {path}: the top level must be a mapping with 'repositories', not {type(top).__name__}")
    loader.get_event()
    seen = False
    while not loader.check_event(yaml.MappingEndEvent):
        key = loader.construct_document(loader.compose_node(None, None))
        if key != "repositories":
            raise ValueError(f"manifest {path}: 1 validation error for Manifest\n{key}\n  Extra inputs are not "
                             "permitted")
        seen = True
        if not loader.check_event(yaml.SequenceStartEvent):
            value = loader.construct_document(loader.compose_node(None, None))
            raise ValueError(f"manifest {path}: 1 validation error for Manifest\nrepositories\n  Input should be "
                             f"a valid list [input_value={value!r}]")
        loader.get_event()
        index = 0
        while not loader.check_event(yaml.SequenceEndEvent):
            yield index, loader.construct_document(loader.compose_node(None, index))
            index += 1
        loader.get_event()
    if not seen:
        raise ValueError(f"manifest {path}: 1 validation error for Manifest\nrepositories\n  Field required")
    loader.get_event()  # MappingEnd
    loader.get_event()  # DocumentEnd
    if not loader.check_event(yaml.StreamEndEvent):
        raise ValueError(f"manifest {path}: expected a single document")


def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little", signed=True)


def _check_unique(path: Path, hashes: array) -> None:
    """Duplicate names from their hashes (8 bytes per entry); a clash is named by a second read."""
    import numpy as np

    h = np.sort(np.frombuffer(hashes, dtype=np.int64))
    clash = h[1:][h[1:] == h[:-1]]
    if not len(clash):
        return
    suspects, seen = set(clash.tolist()), set()
    for repo in _iter_unchecked(path):
        if _name_hash(repo.name) in suspects:
            if repo.name in seen:
                raise ValueError(f"manifest {path}: duplicate repository name {repo.name!r}")
            seen.add(repo.name)


def _iter_unchecked(path: Path) -> Iterator[Repository]:
    with path.open("rb") as stream:
        loader = yaml.SafeLoader(stream)
        try:
            for _, data in _entries(loader, path):
                yield Repository.model_validate(data)
        finally:
            loader.dispose()
