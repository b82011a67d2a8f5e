from pathlib import Path

import pytest

from corpus.manifest import Manifest, load_manifest

ROOT = Path(__file__).resolve().parents[2]


def test_relative_local_paths_resolve_against_manifest_dir(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    m = tmp_path / "sub" / "m.yaml"
    m.write_text(
        "repositories:\n"
        "  - {name: a, url: ../repos/a, ref: main, include: ['rtl/*'], exclude: ['*_tb.v'], license: MIT}\n"
        "  - {name: b, url: https://example.invalid/b.git}\n"
        "  - {name: c, url: 'git@example.invalid:o/c.git', submodules: true}\n"
        "  - {name: d, url: 'file:///srv/d'}\n"
    )
    repos = load_manifest(m).repositories
    assert repos[0].url == str((tmp_path / "repos" / "a").resolve())
    assert (repos[0].ref, repos[0].include, repos[0].exclude, repos[0].license) == ("main", ["rtl/*"], ["*_tb.v"], "MIT")
    assert [r.url for r in repos[1:]] == ["https://example.invalid/b.git", "git@example.invalid:o/c.git", "file:///srv/d"]
    assert repos[2].submodules and not repos[1].submodules and repos[1].ref is None


def test_duplicate_names_and_unknown_keys_are_errors(tmp_path: Path) -> None:
    m = tmp_path / "m.yaml"
    m.write_text("repositories:\n  - {name: a, url: x}\n  - {name: a, url: y}\n")
    with pytest.raises(ValueError, match="duplicate repository name 'a'"):
        load_manifest(m)
    m.write_text("repositories:\n  - {name: a, url: x, branch: main}\n")
    with pytest.raises(ValueError, match=str(m)) as err:
        load_manifest(m)
    # each field and what is wrong, without pydantic's header or documentation links
    assert str(err.value).endswith("repositories.0: branch: Extra inputs are not permitted")
    m.write_text("repositories:\n  - {name: a}\n")
    with pytest.raises(ValueError, match=r"repositories\.0: url: Field required$"):
        load_manifest(m)


def test_shipped_manifests() -> None:
    default = load_manifest(ROOT / "jobs/manifests/default.yaml").repositories
    assert len(default) == 9 and all(r.url.startswith("https://github.com/") for r in default)
    by_name = {r.name: r for r in default}
    assert by_name["nvdla-hw"].ref == "nvdlav1" and by_name["skywater-pdk"].submodules
    sample = load_manifest(ROOT / "sample/manifest.yaml").repositories
    assert {r.name for r in sample} == {"tinycores", "svperiph", "dspkit", "student_labs"}
    assert all(Path(r.url).is_dir() for r in sample)
    assert isinstance(Manifest(repositories=sample), Manifest)


def test_manifest_streams_entry_by_entry_in_constant_memory(tmp_path: Path) -> None:
    """A large manifest is validated one entry at a time (the corpus driver's memory stays flat in N)."""
    import tracemalloc

    from corpus.manifest import iter_manifest

    m = tmp_path / "m.yaml"
    m.write_text("repositories:\n" + "".join(f"  - {{name: r{i:05d}, url: https://e.invalid/r{i}.git}}\n"
                                             for i in range(5000)))
    tracemalloc.start()
    try:
        n = sum(1 for _ in iter_manifest(m))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 5000 and peak < 2 * 2**20  # whole-file parsing peaked at ~18 MB here


def test_streamed_manifest_keeps_yaml_features_and_errors(tmp_path: Path) -> None:
    from corpus.manifest import iter_manifest

    m = tmp_path / "m.yaml"
    m.write_text("repositories:\n  - &base {name: a, url: x, ref: main}\n  - {<<: *base, name: b}\n")
    assert [(r.name, r.ref, r.url) for r in iter_manifest(m)] == [
        ("a", "main", str(tmp_path / "x")), ("b", "main", str(tmp_path / "x"))]
    for text, message in [("", "repositories"), ("repositories:\n", "valid list"), ("- a\n", "mapping"),
                          ("repositories: []\nother: 1\n", "other"), ("repositories:\n  - {name: a, url: x\n", "flow"),
                          ("repositories:\n  - {name: a}\n", "url")]:
        m.write_text(text)
        with pytest.raises(ValueError, match=message):
            list(iter_manifest(m))


@pytest.mark.parametrize("entry", ['{name: "a\\udcff", url: /srv/a}', '{name: a, url: "/srv/\\udcff"}',
                                   '{name: a, url: /srv/a, include: ["rtl/\\ud800*"]}'])
def test_lone_surrogates_are_an_error_naming_the_entry(tmp_path: Path, entry: str) -> None:
    m = tmp_path / "m.yaml"
    m.write_text(f"repositories:\n  - {{name: ok, url: /srv/ok}}\n  - {entry}\n")
    with pytest.raises(ValueError, match=r"repositories\.1: .*not valid Unicode text"):
        load_manifest(m)
