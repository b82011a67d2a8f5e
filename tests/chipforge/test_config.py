from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from chipforge.config import Config, ConfigError, launch_command, load_config, set_dotted


class Stage(Config):
    num_cpus: float = 1.0
    batch_size: int = 8


class JobConfig(Config):
    output_dir: str = "out"
    manifest: str = "m.yaml"
    stage: Stage = Field(default_factory=Stage)
    tags: list[str] = Field(default_factory=list)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_precedence_defaults_yaml_overrides_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "# launch: python -m jobs.x --config job.yaml\noutput_dir: from_yaml\nstage:\n  batch_size: 4\n")
    cfg = load_config(JobConfig, ["--config", str(path)], prog="t", flags={"--output": "output_dir"})
    assert (cfg.output_dir, cfg.stage.batch_size, cfg.stage.num_cpus) == ("from_yaml", 4, 1.0)

    cfg = load_config(
        JobConfig,
        ["--config", str(path), "stage.batch_size=16", "tags=[a, b]", "output_dir=ov", "--output", "flag"],
        prog="t",
        flags={"--output": "output_dir"},
    )
    assert cfg.stage.batch_size == 16
    assert cfg.tags == ["a", "b"]
    assert cfg.output_dir == "flag"  # named flags win over key=value overrides


def test_overrides_may_come_before_between_and_after_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "output_dir: from_yaml\n")
    cfg = load_config(JobConfig, ["stage.batch_size=16", "--config", str(path), "tags=[a]", "--manifest", "x.yaml",
                                  "stage.num_cpus=2"], prog="t", flags={"--manifest": "manifest"})
    assert (cfg.stage.batch_size, cfg.tags, cfg.manifest, cfg.stage.num_cpus) == (16, ["a"], "x.yaml", 2.0)


def test_a_misspelled_section_in_an_override_is_blamed_on_the_override(tmp_path: Path) -> None:
    path = write(tmp_path, "output_dir: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(JobConfig, ["--config", str(path), "stagee.batch_size=3"], prog="t")
    assert "stagee: Extra inputs are not permitted (set by command-line override 'stagee.batch_size=3')" in str(err.value)


def test_another_jobs_yaml_is_named_as_such(tmp_path: Path) -> None:
    path = write(tmp_path, "# launch: python -m jobs.other --config job.yaml\nsources: []\n")
    with pytest.raises(ConfigError) as err:
        load_config(JobConfig, ["--config", str(path)], prog="python -m jobs.mine")
    assert "is for another job: its first line says `python -m jobs.other --config job.yaml`" in str(err.value)
    path.write_text("# launch: python -m jobs.mine --config job.yaml\nsources: []\n")
    with pytest.raises(ConfigError) as err:
        load_config(JobConfig, ["--config", str(path)], prog="python -m jobs.mine")
    assert "another job" not in str(err.value)


def test_unknown_key_names_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "stage:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(JobConfig, ["--config", str(path)], prog="t")
    assert str(path) in str(err.value) and "stage.batch_sise" in str(err.value)


def test_bad_type_and_bad_override(tmp_path: Path) -> None:
    path = write(tmp_path, "stage:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match="stage.batch_size"):
        load_config(JobConfig, ["--config", str(path)], prog="t")
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(JobConfig, ["novalue"], prog="t")


def test_missing_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(JobConfig, ["--config", str(tmp_path / "nope.yaml")], prog="t")
    path = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(JobConfig, ["--config", str(path)], prog="t")


def test_default_config_used_without_flag(tmp_path: Path) -> None:
    path = write(tmp_path, "manifest: default.yaml\n")
    cfg = load_config(JobConfig, [], prog="t", default_config=path)
    assert cfg.manifest == "default.yaml"


def test_default_config_outside_the_checkout_says_where_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's default config is relative to the checkout: run elsewhere, the error says where to cd."""
    checkout = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"cd {checkout}$"):
        load_config(JobConfig, [], prog="t", default_config="jobs/configs/corpus_sample.yaml")
    # a config the user names, or a default that is not the checkout's, keeps the plain error
    for argv, default in ((["--config", "jobs/configs/corpus_sample.yaml"], None), ([], "jobs/configs/nope.yaml")):
        with pytest.raises(ConfigError) as err:
            load_config(JobConfig, argv, prog="t", default_config=default)
        assert "not found" in str(err.value) and "cd " not in str(err.value)


def test_set_dotted_and_launch_header(tmp_path: Path) -> None:
    data: dict = {"a": 1}
    set_dotted(data, "a.b.c", 2)
    assert data == {"a": {"b": {"c": 2}}}
    path = write(tmp_path, "# launch: python -m jobs.build_corpus --config x.yaml\nk: 1\n")
    assert launch_command(path) == "python -m jobs.build_corpus --config x.yaml"


@pytest.mark.parametrize(("url", "shown"), [
    ("https://user:pw@example.invalid/a", "https://example.invalid/a"),
    ("https://tok@example.invalid:8080/a", "https://example.invalid:8080/a"),
    ("ssh://git:pw@example.invalid/b.git", "ssh://git@example.invalid/b.git"),
    ("http://u:pw@[::1]:9/x", "http://[::1]:9/x"),
    ("https://h.invalid/v1?api-key=k1&model=m&X-Amz-Signature=s&token=t",
     "https://h.invalid/v1?api-key=REDACTED&model=m&X-Amz-Signature=REDACTED&token=REDACTED"),
    ("https://h.invalid/a@b?q=1", "https://h.invalid/a@b?q=1"),
    ("s3://bucket/out", "s3://bucket/out"),
    ("out/tune", "out/tune"),
    ("http://u:pw@h.invalid:99999/x", "http://REDACTED"),  # unparseable port: nothing of it is kept
])
def test_redact_url(url: str, shown: str) -> None:
    from chipforge.config import redact_url

    assert redact_url(url) == shown


class Cache(Config):
    cache_dir: str = "cache"


class PathsConfig(Config):
    output_dir: str = "out"
    inputs: list[str] = Field(default_factory=list)
    cache: Cache = Field(default_factory=Cache)
    endpoint: str = "https://llm.example/v1?api-version=2"


def test_storage_options_in_any_path_field_are_an_error_naming_field_and_origin(tmp_path: Path) -> None:
    """One check for every config: an s3:// or gs:// value with query options, at any depth or in a list,
    is a config error naming the field, who set it, and the environment variable to set instead."""
    path = write(tmp_path, "cache:\n  cache_dir: gs://b/cache?endpoint_override=localhost:4443\n")
    with pytest.raises(ConfigError) as err:
        load_config(PathsConfig, ["--config", str(path), "--output",
                                  "s3://b/out?endpoint_override=localhost:9000&scheme=http&secret_key=s3cr3t",
                                  "inputs=['s3://b/in', 's3://b/in2?region=eu-west-1']"],
                    prog="x", flags={"--output": "output_dir"})
    text = str(err.value)
    assert "  output_dir: " in text and "AWS_ENDPOINT_URL=http://localhost:9000" in text
    assert "(set by --output s3://b/out?endpoint_override=" in text and "secret_key=REDACTED)" in text
    assert "s3cr3t" not in text
    assert "  inputs: " in text and "AWS_DEFAULT_REGION=eu-west-1" in text and "(set by command-line override " in text
    assert "  cache.cache_dir: " in text and f"(set by {path}: cache.cache_dir)" in text
    cfg = load_config(PathsConfig, ["--output", "s3://b/out", "inputs=[s3://b/in, gs://b/x]"], prog="x",
                      flags={"--output": "output_dir"})
    assert cfg.output_dir == "s3://b/out" and cfg.inputs == ["s3://b/in", "gs://b/x"]
    with pytest.raises(ValueError, match="storage options in a URI are not supported"):
        cfg.output_dir = "s3://b/out?region=x"  # assignments are validated too


def test_an_override_that_is_not_yaml_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"override 'inputs=\[s3://b/x\?y\]': the value is not valid YAML"):
        load_config(PathsConfig, ["inputs=[s3://b/x?y]"], prog="x")


class FlagsConfig(Config):
    engine: Stage = Field(default_factory=Stage)
    backend: Literal["hf", "vllm"] = "hf"
    mode: Literal["a", "b"] | None = None
    reference: bool = False


def test_flags_show_their_choices_and_a_bool_field_is_a_switch(capsys: pytest.CaptureFixture[str]) -> None:
    """``--backend`` says which values it takes; ``--reference`` alone sets a bool field (it needed a value,
    or a job's own argv rewriting that kept it out of ``--help``)."""
    flags = {"--backend": "backend", "--mode": "mode", "--reference": "reference", "--cpus": "engine.num_cpus"}
    with pytest.raises(SystemExit):
        load_config(FlagsConfig, ["--help"], prog="t", flags=flags)
    text = " ".join(capsys.readouterr().out.split())
    assert "--backend BACKEND sets backend: hf | vllm" in text and "--mode MODE sets mode: a | b" in text
    assert "--reference sets reference=true" in text and "--cpus NUM_CPUS sets engine.num_cpus" in text
    cfg = load_config(FlagsConfig, ["--reference", "--backend", "vllm"], prog="t", flags=flags)
    assert cfg.reference is True and cfg.backend == "vllm"
    assert load_config(FlagsConfig, [], prog="t", flags=flags).reference is False
