"""Documentation source configs: a crawled site, or a local directory of docs (air-gapped)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from chipforge.config import Config

DEFAULT_GLOBS = ["**/*.html", "**/*.htm", "**/*.md", "**/*.markdown", "**/*.rst", "**/*.txt"]


class SiteSource(Config):
    """A documentation site: crawl from ``start_urls``, following links under ``allowed_prefixes``."""

    kind: Literal["site"] = "site"
    name: str = Field(min_length=1)
    tool: str = Field(min_length=1)  # yosys | openroad | opensta | dreamplace | openlane | magic | ...
    start_urls: list[str] = Field(min_length=1)
    allowed_prefixes: list[str] = Field(default_factory=list)  # empty: the start URLs' directories
    max_pages: int = Field(200, ge=1)
    max_depth: int = Field(3, ge=0)  # link hops from a start URL
    license: str | None = None

    @field_validator("start_urls", "allowed_prefixes")
    @classmethod
    def _http(cls, urls: list[str]) -> list[str]:
        for u in urls:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"{u!r} is not an http(s) URL")
        return urls

    @model_validator(mode="after")
    def _default_prefixes(self) -> "SiteSource":
        if not self.allowed_prefixes:
            object.__setattr__(self, "allowed_prefixes", sorted({u.rsplit("/", 1)[0] + "/" for u in self.start_urls}))
        return self


class LocalSource(Config):
    """A directory of docs on a local path or URI (e.g. ``docs/`` of a repository the corpus job cloned)."""

    kind: Literal["local"] = "local"
    name: str = Field(min_length=1)
    tool: str = Field(min_length=1)
    path: str = Field(min_length=1)  # relative paths are resolved from the working directory
    globs: list[str] = Field(default_factory=lambda: list(DEFAULT_GLOBS))
    license: str | None = None


Source = SiteSource | LocalSource
