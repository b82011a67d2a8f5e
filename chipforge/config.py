"""Typed job configs: pydantic models mirrored by YAML files, overridable from the CLI.

Every job owns one ``Config`` subclass. Its YAML files start with a header naming the
launch command (``# launch: python -m jobs.X --config path.yaml``). Values are resolved in
this order, later wins: model defaults → YAML → ``key.sub=value`` overrides → named flags
(``--output DIR``). Validation happens before any work starts; a bad value exits with a
message naming the file and the field.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from chipforge import fs

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "jobs" / "configs"
LAUNCH_RE = re.compile(r"^#\s*launch:\s*(?P<cmd>.+)$", re.IGNORECASE)


class Config(BaseModel):
    """Base for job and stage configs: unknown keys are errors, assignments re-validate.

    Every field of every config, at any depth and inside lists and mappings, is checked for
    object-store URIs with query options (``s3://b/p?endpoint_override=…``): they are an error naming
    the field (``fs.options_problem`` says why and which environment variables to set instead).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_storage_options_in_paths(cls, value: Any) -> Any:
        for text in _strings(value):
            problem = fs.options_problem(text)
            if problem:
                raise ValueError(problem)
        return value


def _strings(value: Any) -> Iterator[str]:
    """The strings in a field's value: itself, or those in its lists, tuples, sets and mapping values
    (nested configs check their own fields)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)


C = TypeVar("C", bound=Config)


def _field_type(cls: type[BaseModel], dotted: str) -> Any:
    """The annotation of the dotted field of ``cls`` (``Optional[X]`` as ``X``), None when not found."""
    import types
    import typing

    annotation: Any = cls
    for part in dotted.split("."):
        fields = getattr(annotation, "model_fields", None)
        if not fields or part not in fields:
            return None
        annotation = fields[part].annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
            annotation = args[0]
    return annotation


def _flag_help(cls: type[BaseModel], dotted: str) -> str:
    """``sets FIELD``, with the values it takes when the field is a choice (a ``Literal``)."""
    import typing

    annotation = _field_type(cls, dotted)
    if typing.get_origin(annotation) is typing.Literal:
        return f"sets {dotted}: {' | '.join(str(a) for a in typing.get_args(annotation))}"
    return f"sets {dotted}"


class ConfigError(SystemExit):
    """Raised (as a clean exit with a message) when a config cannot be loaded or validated."""


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted == 'a.b'``, creating dicts on the way."""
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from a local path or URI; an empty file is an empty mapping."""
    try:
        text = fs.read_text(str(path))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, got {type(data).__name__}")
    return data


def launch_command(path: str | Path) -> str | None:
    """The command named in a YAML file's ``# launch:`` header, if any."""
    for line in Path(path).read_text().splitlines()[:10]:
        m = LAUNCH_RE.match(line.strip())
        if m:
            return m.group("cmd").strip()
    return None


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        why = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({why}); quote the items of a list "
                          f"(key=['a', 'b'])") from None


class CommandLine:
    """Where each value came from (for error messages) and the boolean extra flags."""

    def __init__(self, config_file: str | None, origins: dict[str, str], flags: dict[str, bool]) -> None:
        self.config_file = config_file
        self.origins = origins
        self.flags = flags

    def origin(self, dotted: str) -> str:
        """``--output``, ``override a.b=…`` or the YAML file that set ``dotted``: the longest prefix
        set on the command line, else an override below it (``dedupp.threshold=…`` made the
        unknown section ``dedupp``), else the file."""
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            key = ".".join(parts[:i])
            if key in self.origins:
                return self.origins[key]
        below = [origin for key, origin in self.origins.items() if key.startswith(dotted + ".")]
        if below:
            return below[0]
        return f"{self.config_file}: {dotted}" if self.config_file else f"default {dotted}"

    def flag(self, name: str) -> bool:
        return bool(self.flags.get(name))


def load_config(
    cls: type[C],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    default_config: str | Path | None = None,
    flags: Mapping[str, str] | None = None,
    description: str | None = None,
    extra_flags: Sequence[str] = (),
    with_origins: bool = False,
) -> Any:
    """Build ``cls`` from ``--config YAML``, ``key=value`` overrides and named flags.

    ``flags`` maps a CLI flag (``--output``) to the dotted config field it sets (``output_dir``);
    ``extra_flags`` are boolean switches (``--force``) returned in the :class:`CommandLine`.
    A validation error names the flag, the override or the YAML file that set the bad value.
    With ``with_origins`` the result is ``(config, CommandLine)``.
    """
    flags = dict(flags or {})
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        default=str(default_config) if default_config else None,
        help=f"YAML config (default: {default_config})" if default_config else "YAML config",
    )
    for flag, field in flags.items():
        if _field_type(cls, field) is bool:  # a switch: the flag alone sets the field true
            parser.add_argument(flag, dest="flag__" + field.replace(".", "__"), default=None, action="store_const",
                                const=True, help=f"sets {field}=true")
            continue
        parser.add_argument(flag, dest="flag__" + field.replace(".", "__"), default=None,
                            metavar=field.rsplit(".", 1)[-1].upper(), help=_flag_help(cls, field))
    for flag in extra_flags:
        parser.add_argument(flag, action="store_true", help=_EXTRA_HELP.get(flag, ""))
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override any config field")
    # intermixed: overrides may come before, between and after the flags
    args = parser.parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))

    data: dict[str, Any] = _read_config(args.config, default_config) if args.config else {}
    origins: dict[str, str] = {}
    for item in args.overrides:
        key, value = parse_override(item)
        set_dotted(data, key, value)
        shown = f"{item.split('=', 1)[0]}={redact_url(item.split('=', 1)[1])}"  # no secret of a URL in an error
        origins[key] = f"command-line override {shown!r}"
    for flag, field in flags.items():
        value = getattr(args, "flag__" + field.replace(".", "__"))
        if value is not None:
            set_dotted(data, field, value)
            origins[field] = f"{flag} {redact_url(str(value))}"
    line = CommandLine(args.config, origins, {f.lstrip("-").replace("-", "_"): getattr(args, f.lstrip("-").replace("-", "_"))
                                              for f in extra_flags})
    try:
        cfg = validate(cls, data, source=args.config or "<defaults>", origin=line.origin)
    except ConfigError as exc:
        meant = launch_command(args.config) if args.config and Path(args.config).is_file() else None
        if meant and not re.search(re.escape(prog) + r"(\s|$)", meant):  # another job's YAML: its first line says
            raise ConfigError(f"{exc}\n  ({args.config} is for another job: its first line says "
                              f"`{meant}`; this is {prog})") from exc
        raise
    return (cfg, line) if with_origins else cfg


def _read_config(path: str, default_config: str | Path | None) -> dict[str, Any]:
    """``read_yaml``; the job's own default config, relative to the checkout, missing from the working
    directory means the job runs outside the checkout: the error says where to run it."""
    try:
        return read_yaml(path)
    except ConfigError:
        checkout = Path(__file__).resolve().parents[1]
        if (default_config is None or path != str(default_config) or Path(path).is_absolute()
                or not (checkout / path).is_file() or Path(path).exists()):
            raise
        raise ConfigError(f"config file not found: {path} (in {Path.cwd()}). Jobs run from the chipforge "
                          f"checkout, where their configs, the bundled sample and the configs' relative "
                          f"paths are: cd {checkout}") from None


_EXTRA_HELP = {"--force": "redo the job even if its output is up to date",
               "--verbose": "show Ray's own log lines and progress bars",
               "--brief": "print the first lines of the summary only (the quickstart's steps)"}


def validate(cls: type[C], data: Mapping[str, Any], *, source: str,
             origin: Callable[[str], str] | None = None) -> C:
    """Validate ``data`` as ``cls``; errors name where each bad field was set (file, flag or override)."""
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        lines = [f"invalid config for {cls.__name__} (from {source}):"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            where = origin(loc) if origin else f"{source}: {loc}"
            lines.append(f"  {loc}: {err['msg']} (set by {where})")
        raise ConfigError("\n".join(lines)) from exc


def dump_yaml(cfg: BaseModel) -> str:
    """The resolved config as YAML (for run outputs), secrets in URLs redacted (``redact_secrets``)."""
    return yaml.safe_dump(redact_secrets(cfg.model_dump(mode="json")), sort_keys=False)


REDACTED = "REDACTED"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SECRET_PARAM = re.compile(r"(key|token|secret|passw|signature|sig|credential|auth)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` fit for reports, logs and data: no password, no user name except over ssh (a token is
    often the user name: ``https://<token>@host``), and no value of a query parameter whose name says secret
    (``?api-key=...``, ``X-Amz-Signature``). Anything that is not a URL is returned as it is."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    if not _URL.match(url):
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host  # IPv6
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not parseable (a bad port): keep only the scheme
        return url.split("://", 1)[0] + "://" + REDACTED
    netloc = parts.netloc
    if parts.username is not None or parts.password is not None:
        keep_user = parts.scheme.lower() == "ssh" and parts.username
        netloc = (f"{parts.username}@" if keep_user else "") + host + port
    query = parts.query
    if query and _SECRET_PARAM.search(query):
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe=REDACTED)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_secrets(value: Any) -> Any:
    """``value`` (a config as JSON data) with every URL string passed through ``redact_url``: a job's
    report.json and a run's config.yaml never hold the credentials a URL in the config carried."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {k: redact_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_secrets(v) for v in value]
    return value
