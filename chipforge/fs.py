"""Filesystem helpers over pyarrow.fs so local paths and ``s3://`` URIs look the same.

Writes are atomic at the granularity of a file or a directory: data goes to a temporary
sibling first and is renamed into place on success, so a crashed run never leaves a
half-written output that a rerun would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _prefix(path: str) -> str:
    """``scheme://`` of a URI, "" for a local path: what turns a filesystem's own path back into ``path``'s form."""
    return path.split("://", 1)[0] + "://" if is_uri(path) else ""


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path, ``file://`` or any pyarrow-supported URI.

    A URI with query options (``?endpoint_override=…``) is a ValueError (:func:`options_problem`)."""
    if path.startswith("file://"):
        path = path[len("file://") :]
    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    problem = options_problem(path)
    if problem:
        raise ValueError(problem)
    scheme, rest = path.split("://", 1)
    bucket = rest.split("/", 1)[0]
    if scheme not in _CACHED_SCHEMES or any(c in rest for c in "%@#"):
        return pafs.FileSystem.from_uri(path)  # escapes or credentials in the URI: pyarrow's own parsing
    env = tuple(os.environ.get(k) for k in _STORE_ENV)
    return _bucket_filesystem(scheme, bucket, env), rest.rstrip("/") or bucket


_CACHED_SCHEMES = frozenset({"s3", "gs", "gcs"})
# what pyarrow reads from the environment when it builds an object-store filesystem (the cache's key)
_STORE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
              "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE",
              "AWS_SHARED_CREDENTIALS_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
              "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST")


# object stores as pyarrow names them in a URI: their storage options come from the environment
STORE_SCHEMES = frozenset({"s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"})
# where each pyarrow URI option of S3 is set instead (the AWS SDK and pyarrow read these)
_OPTION_ENV = {"endpoint_override": "AWS_ENDPOINT_URL", "scheme": "AWS_ENDPOINT_URL", "region": "AWS_DEFAULT_REGION",
               "access_key": "AWS_ACCESS_KEY_ID", "secret_key": "AWS_SECRET_ACCESS_KEY",
               "session_token": "AWS_SESSION_TOKEN", "role_arn": "AWS_ROLE_ARN"}


def options_problem(path: str) -> str | None:
    """Why ``path`` cannot be used when it is an object-store URI carrying query options
    (``s3://b/p?endpoint_override=host:9000&scheme=http``, ``?region=…``), else None.

    pyarrow would honour them for that one path, but every path derived from it would not: a
    subpath joined onto it lands inside the options (``?scheme=http/sub``), a listed path loses them
    and goes to the default endpoint, and Ray's and the training libraries' own readers are given
    plain paths. Options therefore come from the environment, which every process (Ray workers
    included) reads; the message names the variables to set."""
    scheme, sep, rest = path.partition("://")
    if not sep or scheme.lower() not in STORE_SCHEMES or "?" not in rest:
        return None
    from urllib.parse import parse_qsl

    options = dict(parse_qsl(rest.split("?", 1)[1], keep_blank_values=True))
    hints = []
    if "endpoint_override" in options or "scheme" in options:
        endpoint = options.get("endpoint_override", "HOST:PORT")
        if "://" not in endpoint:
            endpoint = f"{options.get('scheme', 'https')}://{endpoint}"
        hints.append(f"AWS_ENDPOINT_URL={endpoint}")
    hints += [f"{_OPTION_ENV[k]}={v if 'key' not in k and 'token' not in k else '...'}"
              for k, v in options.items() if k in _OPTION_ENV and _OPTION_ENV[k] != "AWS_ENDPOINT_URL"]
    plain = path.split("?", 1)[0]
    what = " ".join(hints) if hints and scheme.lower() == "s3" else (
        "the store's settings (S3: AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, AWS_PROFILE, ...; "
        "GCS: GOOGLE_APPLICATION_CREDENTIALS, STORAGE_EMULATOR_HOST)")
    return (f"{plain}?{', '.join(sorted(options)) or '...'}: storage options in a URI are not supported "
            f"(paths joined onto it or listed below it would lose them); use the plain URI {plain!r} and set "
            f"{what} in the job's environment (on a cluster: its runtime_env env_vars)")


@functools.lru_cache(maxsize=64)
def _bucket_filesystem(scheme: str, bucket: str, env: tuple[str | None, ...]) -> pafs.FileSystem:
    """One filesystem per bucket and environment: building one resolves the bucket's region, a request
    to the store, which thousands of small reads (status files, markers) would otherwise repeat."""
    return pafs.FileSystem.from_uri(f"{scheme}://{bucket}")[0]


def on_storage_of(path: str, like: str) -> str:
    """A path inside ``like``'s filesystem (as pyarrow and Ray report them: no scheme) as a path this
    module and Ray accept: ``like``'s scheme is put back for object stores."""
    if not is_uri(like) or "://" in path:
        return path
    return _prefix(like) + path.lstrip("/")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def exists(path: str) -> bool:
    filesystem, p = resolve(path)
    return filesystem.get_file_info(p).type != pafs.FileType.NotFound


def makedirs(path: str) -> None:
    filesystem, p = resolve(path)
    filesystem.create_dir(p, recursive=True)


def read_bytes(path: str) -> bytes:
    filesystem, p = resolve(path)
    if filesystem.get_file_info(p).type == pafs.FileType.NotFound:
        raise FileNotFoundError(path)
    with filesystem.open_input_stream(p) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


def read_jsonl(path: str, *, errors: str = "strict") -> list[tuple[int, Any]]:
    """(line number, value) of every non-blank line; a line that is not JSON raises naming path:line."""
    out: list[tuple[int, Any]] = []
    for lineno, line in enumerate(read_bytes(path).decode("utf-8", errors=errors).splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not JSON ({e})") from e
    return out


def delete(path: str) -> None:
    """Remove a file or directory tree; missing paths are fine."""
    filesystem, p = resolve(path)
    info = filesystem.get_file_info(p)
    if info.type == pafs.FileType.Directory:
        filesystem.delete_dir(p)
    elif info.type == pafs.FileType.File:
        filesystem.delete_file(p)


def write_bytes(path: str, data: bytes) -> None:
    """Write a file atomically (temporary sibling, then rename); on any failure or interruption (Ctrl-C,
    a stopped job) the temporary file is removed and ``path`` is left as it was, except on an object store
    for data over :data:`SERVER_COPY_MAX_BYTES`, whose rename is a streamed copy (:func:`_move_file`):
    one that fails part-way leaves no file at ``path``, never a truncated one."""
    filesystem, p = resolve(path)
    parent = p.rsplit("/", 1)[0]
    if parent:
        filesystem.create_dir(parent, recursive=True)
    tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with filesystem.open_output_stream(tmp) as f:
            f.write(data)
        _move_file(filesystem, tmp, p, len(data))
    except BaseException:
        if filesystem.get_file_info(tmp).type == pafs.FileType.File:
            filesystem.delete_file(tmp)
        raise


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_arrow(path: str, table: Any) -> None:
    """One Arrow IPC file holding ``table`` (small intermediate files: key partitions, counts)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    write_bytes(path, sink.getvalue().to_pybytes())


def read_arrow(path: str) -> Any:
    """The table of an Arrow IPC file written by ``write_arrow``."""
    import pyarrow as pa

    return pa.ipc.open_file(pa.BufferReader(read_bytes(path))).read_all()


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a temporary sibling directory; on success it replaces ``path``.

    On an exception the temporary directory is removed and ``path`` is left as it was. On an object
    store the final move goes file by file (``_move_tree``): if it fails part-way, ``path`` holds part
    of the new output and the exception propagates, so the job writes no completion marker and its
    rerun writes ``path`` again.
    """
    tmp = f"{path.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        delete(tmp)
        raise
    filesystem, src = resolve(tmp)
    _, dst = resolve(path)
    try:
        delete(path)
        _move_tree(filesystem, src, dst)
    finally:
        delete(tmp)  # gone already after a successful move; removed when interrupted before it


def _move_tree(filesystem: pafs.FileSystem, src: str, dst: str, threads: int = 16) -> None:
    """Rename a directory; object stores have no directory rename, so there each file moves
    (:func:`_move_file`, ``threads`` at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    if isinstance(filesystem, pafs.LocalFileSystem):
        filesystem.move(src, dst)
        return
    filesystem.create_dir(dst, recursive=True)
    moves = []
    for info in filesystem.get_file_info(pafs.FileSelector(src, recursive=True)):
        target = dst + info.path[len(src):]
        if info.type == pafs.FileType.File:
            moves.append((info.path, target, info.size))
        elif info.type == pafs.FileType.Directory:
            filesystem.create_dir(target, recursive=True)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda m: _move_file(filesystem, *m), moves))  # list(): the first failure raises here
    filesystem.delete_dir(src)


# S3's CopyObject, which pyarrow's S3FileSystem.move is (one request, no multipart copy), refuses a
# source over 5 GiB; transformers (5.x) saves a merged model in shards of up to 50 GB by default
SERVER_COPY_MAX_BYTES = 5 * 1024**3
STREAM_CHUNK_BYTES = 16 * 1024**2


def _move_file(filesystem: pafs.FileSystem, src: str, dst: str, size: int | None) -> None:
    """Move one file: a rename locally, a server-side copy on an object store, and there a file over
    :data:`SERVER_COPY_MAX_BYTES` (or of unknown size) is streamed instead (``STREAM_CHUNK_BYTES`` at a
    time, so memory stays flat; the store's multipart upload makes the object appear whole, at the
    end). A copy that fails part-way removes what it wrote to ``dst`` and raises; ``src`` stays."""
    if isinstance(filesystem, pafs.LocalFileSystem) or (size is not None and size <= SERVER_COPY_MAX_BYTES):
        filesystem.move(src, dst)
        return
    _stream_copy(filesystem, src, dst)
    filesystem.delete_file(src)


def _stream_copy(filesystem: pafs.FileSystem, src: str, dst: str) -> None:
    """Copy ``src`` to ``dst`` through this process, a chunk at a time; on failure ``dst`` is removed."""
    try:
        with filesystem.open_input_stream(src) as source, filesystem.open_output_stream(dst) as sink:
            while chunk := source.read(STREAM_CHUNK_BYTES):
                sink.write(chunk)
    except BaseException:
        with contextlib.suppress(OSError):  # closing the stream on the way out completed a partial object
            if filesystem.get_file_info(dst).type == pafs.FileType.File:
                filesystem.delete_file(dst)
        raise


def listdir(path: str, *, recursive: bool = False, files_only: bool = False) -> list[str]:
    """Paths below ``path`` in the form of ``path``: absolute local paths, or URIs with their scheme.

    Each can be passed to this module's functions again (and to Ray Data's readers). Empty when
    ``path`` does not exist.
    """
    filesystem, p = resolve(path)
    if filesystem.get_file_info(p).type == pafs.FileType.NotFound:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(p, recursive=recursive))
    scheme = _prefix(path)
    return sorted(scheme + i.path for i in infos if not files_only or i.type == pafs.FileType.File)


def relative(path: str, root: str) -> str:
    """``path`` (as ``listdir(root)`` gives it) relative to ``root``, without a leading slash."""
    inner = resolve(root)[1].rstrip("/")
    base = _prefix(root) + inner
    if not (path == base or path.startswith(base + "/")):
        raise ValueError(f"{path} is not below {root}")
    return path[len(base):].lstrip("/")


def read_ipc_rows(path: str, start: int, stop: int) -> Any:
    """Rows ``[start, stop)`` of a local Arrow IPC file, memory-mapped, as one contiguous table.

    A Ray task on the node that holds the file runs this so that the block it returns is written
    into the object store by that worker, not by the driver (whose memory must stay flat)."""
    import pyarrow as pa

    with pa.memory_map(path) as source:
        return pa.ipc.open_file(source).read_all().slice(start, max(0, stop - start)).combine_chunks()
