"""``python -m jobs.export``: merged Hugging Face models and Ollama Modelfiles from the registry."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import warnings
from pathlib import Path

import pytest

from chipforge.vocab import SYSTEM_PROMPTS
from jobs import export as export_job
from serving.export import TemplateParts, template_parts
from tests.serving import fixtures

REPO = Path(__file__).resolve().parents[2]
INSTRUCTION = re.compile(r'^(FROM|ADAPTER|TEMPLATE|SYSTEM|PARAMETER|LICENSE|MESSAGE)\s+(.*)$')


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory):
    return fixtures.tiny_registry(tmp_path_factory)


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(instruction, argument) pairs; triple-quoted arguments may span lines."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.startswith("#"):
            continue
        m = INSTRUCTION.match(line)
        assert m, f"not a Modelfile instruction: {line!r}"
        arg = m.group(2)
        if arg.startswith('"""'):
            while not (arg.endswith('"""') and len(arg) >= 6):
                arg += "\n" + lines[i]
                i += 1
            arg = arg[3:-3]
        out.append((m.group(1), arg))
    return out


def test_a_missing_registry_says_which_job_writes_one(tmp_path, capsys):
    """A fresh clone running ``python -m jobs.export`` before the quickstart: the error says what writes the
    default registry (before: only jobs.finetune / jobs.tune, not the quickstart the README starts with)."""
    assert export_job.main(["--registry", str(tmp_path / "nope.json"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "python -m jobs.quickstart writes out/quickstart/registry.json" in err, err


def test_merged_export_matches_the_peft_model(tiny_registry, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    argv = ["--registry", tiny_registry["registry"], "--phase", "timing_analysis", "--format", "merged",
            "--output", str(out)]
    assert export_job.main(argv) == 0
    d = out / "chipforge-timing_analysis"
    assert (d / "model.safetensors").exists() and (d / "config.json").exists() and (d / "tokenizer.json").exists()
    assert not (d / "adapter_config.json").exists()  # a plain model: transformers and vLLM load it as such
    merged = AutoModelForCausalLM.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    assert tok.chat_template
    model, ref_tok = fixtures.peft_reference(tiny_registry)
    model.set_adapter("timing_analysis")
    ids = torch.tensor([ref_tok("The worst negative slack is on the path")["input_ids"]])
    assert tok("x")["input_ids"] == ref_tok("x")["input_ids"]
    with torch.inference_mode():
        want = model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), float((got - want).abs().max())
    assert not torch.allclose(got, base, atol=1e-3)  # the adapter is really in there
    assert export_job.main(argv) == 0  # a rerun with the same inputs is skipped


def test_ollama_export_writes_complete_modelfiles(tiny_registry, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "ollama"
    assert export_job.main(["--registry", tiny_registry["registry"], "--phase", "all", "--format", "ollama",
                            "--output", str(out)]) == 0
    assert "ollama create chipforge-rtl_design -f" in capsys.readouterr().out
    readme = (out / "README.md").read_text()
    for phase in fixtures.PHASES:
        name = f"chipforge-{phase}"
        d = out / name
        assert f"ollama create {name} -f {d / 'Modelfile'}" in readme
        ins = parse_modelfile((d / "Modelfile").read_text())
        kinds = [k for k, _ in ins]
        assert {"FROM", "ADAPTER", "TEMPLATE", "SYSTEM", "PARAMETER", "LICENSE"} <= set(kinds)
        args = dict((k, a) for k, a in ins if k != "PARAMETER")
        base = (d / args["FROM"]).resolve()
        assert args["FROM"] == "../base" and {"config.json", "model.safetensors", "tokenizer.json"} <= {
            p.name for p in base.iterdir()}
        adapter = (d / args["ADAPTER"]).resolve()
        assert args["ADAPTER"] == "./adapter" and (adapter / "adapter_config.json").exists()
        src = load_file(Path(tiny_registry["adapters"][phase]) / "adapter_model.safetensors")
        got = load_file(adapter / "adapter_model.safetensors")
        assert src.keys() == got.keys() and all((src[k] == got[k]).all() for k in src)
        assert args["SYSTEM"] == SYSTEM_PROMPTS[phase]
        params = [a.split(" ", 1) for k, a in ins if k == "PARAMETER"]
        assert ["temperature", "0.2"] in params and ["num_ctx", "2048"] in params
        assert {v for k, v in params if k == "stop"} == {'"<|end|>"', '"</s>"'}
        assert "{{ .Content }}" in args["TEMPLATE"] and "<|assistant|>" in args["TEMPLATE"]
        assert "Apache-2.0" in args["LICENSE"] and "LoRA adapter" in args["LICENSE"]


def test_merged_export_prints_no_future_warning(tiny_registry, tmp_path):
    """The jobs are quiet: PEFT's read of transformers' deprecated ``is_gradient_checkpointing`` (a
    FutureWarning on every adapter load) does not reach the terminal."""
    argv = ["--registry", tiny_registry["registry"], "--phase", "rtl_design", "--format", "merged",
            "--output", str(tmp_path / "merged")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert export_job.main(argv) == 0
    assert not [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]


def readme_commands(readme: str) -> tuple[list[list[str]], list[list[str]]]:
    """(the commands for any directory, the ones after the README's ``cd`` line), each split like a shell."""
    blocks: list[list[list[str]]] = [[]]
    for line in readme.splitlines():
        if line.startswith("    cd "):
            blocks.append([])
        elif line.startswith("    ollama create "):
            blocks[-1].append(shlex.split(line))
    return blocks[0], (blocks[1] if len(blocks) > 1 else [])


def test_ollama_readme_commands_work_from_any_directory(tiny_registry, tmp_path, monkeypatch):
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run_dir.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(run_dir)  # a relative --output, as in the docs (out/ollama)
    argv = ["--config", str(REPO / "jobs" / "configs" / "export_merged.yaml"), "--registry",
            tiny_registry["registry"], "--phase", "all", "--format", "ollama", "--output", "out/ollama"]
    assert export_job.main(argv) == 0
    out = run_dir / "out" / "ollama"
    readme = (out / "README.md").read_text()
    anywhere, from_readme_dir = readme_commands(readme)
    assert "any directory" in readme and len(anywhere) == len(fixtures.PHASES) == len(from_readme_dir)
    monkeypatch.chdir(elsewhere)
    for cmd in anywhere:
        name, modelfile = cmd[2], Path(cmd[cmd.index("-f") + 1])
        assert cmd[:2] == ["ollama", "create"] and modelfile.is_file(), cmd
        assert modelfile.samefile(out / name / "Modelfile")
    monkeypatch.chdir(out)  # a moved copy: the README's cd line, then paths relative to its directory
    for cmd in from_readme_dir:
        assert Path(cmd[cmd.index("-f") + 1]).samefile(out / cmd[2] / "Modelfile")


def split_rows(phase: str) -> dict[str, int]:
    import pyarrow.parquet as pq

    rows: dict[str, int] = {}
    for f in (REPO / "sample" / "dataset").glob(f"*/phase={phase}/split=*/*.parquet"):
        split = f.parent.name.split("=", 1)[1]
        rows[split] = rows.get(split, 0) + pq.read_metadata(f).num_rows
    return rows


def test_ollama_licence_counts_the_examples_trained_on(tiny_registry, tmp_path):
    """N in "fine-tuned on N examples" is what training read from the train split (the training
    report's ``examples.train`` when it is beside the adapter), never the validation/test examples."""
    rtl, timing = split_rows("rtl_design"), split_rows("timing_analysis")
    assert rtl.get("test") and rtl.get("validation") and timing.get("test")  # the sample has other splits
    registry = json.loads(Path(tiny_registry["registry"]).read_text())
    entry = registry["specialists"]["rtl_design"]
    adapter = tmp_path / "finetune-rtl" / "adapter"  # a jobs.finetune output: adapter/ and report.json
    shutil.copytree(entry["adapter_path"], adapter)
    entry["adapter_path"] = str(adapter)
    trained = rtl["train"] - 5
    (adapter.parent / "report.json").write_text(json.dumps(
        {"job": "finetune", "phase": "rtl_design", "adapter_path": str(adapter),
         "examples": {"read": rtl["train"] + rtl["validation"], "train": trained, "validation": rtl["validation"]}}))
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps(registry))
    out = tmp_path / "ollama"
    assert export_job.main(["--registry", str(reg), "--phase", "all", "--format", "ollama", "--output", str(out)]) == 0

    def licence(phase: str) -> str:
        return dict(parse_modelfile((out / f"chipforge-{phase}" / "Modelfile").read_text()))["LICENSE"]

    text = licence("rtl_design")
    assert f"fine-tuned on {trained} examples" in text and f"the {rtl['train']} examples of that split" in text
    assert sum(int(n) for n in re.findall(r"^  \S+: (\d+)$", text, re.M)) == rtl["train"]
    text = licence("timing_analysis")  # no training report: the train split's size, said as such
    assert f"fine-tuned on the dataset's train split: {timing['train']} examples" in text
    assert not re.search(rf"\b{sum(timing.values())} examples\b", text)  # not every split's examples


def test_ollama_export_to_an_object_store_is_a_usage_error(tiny_registry, tmp_path, capsys):
    argv = ["--registry", tiny_registry["registry"], "--phase", "all", "--format", "ollama",
            "--output", "s3://chipforge-test-bucket/ollama"]
    assert export_job.main(argv) == 2
    assert "local directory" in capsys.readouterr().err


def test_unknown_phase_is_a_usage_error(tiny_registry, tmp_path, capsys):
    argv = ["--registry", tiny_registry["registry"], "--phase", "routing", "--output", str(tmp_path / "x")]
    assert export_job.main(argv) == 2 and "routing" in capsys.readouterr().err
    assert export_job.main([*argv[:3], "wizardry", *argv[4:]]) == 2


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Llama-2 style: the system prompt is folded into the first user turn, which the per-role form cannot express.
FOLDED = ("{% for m in messages %}{% if m['role'] == 'system' %}{% set sys = m['content'] %}"
          "{% elif m['role'] == 'user' %}{{ '[INST] ' + (sys + ' ' if sys is defined and loop.index0 == 1 else '') "
          "+ m['content'] + ' [/INST]' }}{% else %}{{ ' ' + m['content'] + ' </s>' }}{% endif %}{% endfor %}")


def test_template_translation(tiny_registry):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_registry["base"])
    parts = template_parts(tok)
    assert parts == TemplateParts("<|system|>\n", "<|end|>\n", "<|user|>\n", "<|end|>\n", "<|assistant|>\n",
                                  "<|end|>\n</s>", "<s>")
    tok.chat_template = CHATML
    chatml = template_parts(tok)
    assert chatml is not None and chatml.user_prefix == "<|im_start|>user\n" and chatml.bos == ""
    assert chatml.go_template().count("{{ .Content }}") == 3
    tok.chat_template = FOLDED
    assert template_parts(tok) is None
    tok.chat_template = None
    assert template_parts(tok) is None


# ------------------------------------------------------------------------ hand-edited or hostile registries

def edited_registry(tiny_registry, tmp_path: Path, edit) -> str:
    """A copy of the tiny registry after ``edit(data)`` (a person's hand edit, or a hostile one)."""
    data = json.loads(Path(tiny_registry["registry"]).read_text())
    edit(data)
    path = tmp_path / "edited-registry.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("fmt", ["ollama", "merged"])
@pytest.mark.parametrize("case", ["traversal", "modelfile_injection", "shell_in_name", "base_with_newline",
                                  "bad_prefix"])
def test_hostile_registry_entries_are_usage_errors(tiny_registry, tmp_path, capsys, case, fmt):
    """A registry key is a directory under OUTPUT (replaced by the export), a Modelfile line and a README
    shell command: a key that is not a phase, a base with a line break or a prefix that makes an invalid
    model name is a usage error naming the entry, before anything is written (before: ``x/../../escaped``
    replaced a directory outside OUTPUT and a key with line breaks added FROM/SYSTEM lines)."""
    keys = {"traversal": "x/../../escaped", "modelfile_injection": "x\nFROM /etc/passwd\nSYSTEM evil",
            "shell_in_name": "x; touch pwned"}

    def edit(data):
        entry = data["specialists"]["rtl_design"]
        if case in keys:
            data["specialists"] = {keys[case]: entry}
        elif case == "base_with_newline":
            entry["base_model"] = entry["base_model"] + "\nADAPTER /etc"

    out = tmp_path / "work" / "out"
    argv = ["--registry", edited_registry(tiny_registry, tmp_path, edit), "--phase", "all", "--format", fmt,
            "--output", str(out)] + (["prefix=my model"] if case == "bad_prefix" else [])
    assert export_job.main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot export" in err and "specialists[" in err, err
    assert ("prefix" in err) if case == "bad_prefix" else ("base_model" in err if case == "base_with_newline"
                                                           else "is not a phase" in err)
    assert not (tmp_path / "work" / "escaped").exists() and not list(tmp_path.rglob("Modelfile"))
    assert not list(tmp_path.rglob("*.safetensors"))


def test_ollama_parameters_and_base_must_be_one_line(tiny_registry, tmp_path, capsys):
    argv = ["--registry", tiny_registry["registry"], "--phase", "all", "--format", "ollama", "--output",
            str(tmp_path / "o")]
    assert export_job.main([*argv, 'ollama.parameters={"top_p": "0.9\\nFROM /etc/passwd"}']) == 2
    assert "ollama.parameters" in capsys.readouterr().err
    assert export_job.main([*argv, 'ollama.base="llama3\\nADAPTER /etc"']) == 2
    assert "ollama.base" in capsys.readouterr().err
    assert not list(tmp_path.rglob("Modelfile"))


def test_ollama_export_rewrites_the_base_saved_for_another_base_model(tiny_registry, tmp_path):
    """OUTPUT/base is reused only for the base it was saved from: after the registry moved to another
    base, the export used to keep the old weights under ``FROM ../base`` while naming the new base."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    other = tmp_path / "other-base"  # same shapes (the adapters fit), other weights
    model = AutoModelForCausalLM.from_pretrained(tiny_registry["base"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.25)
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_registry["base"]).save_pretrained(other)
    out = tmp_path / "ollama"
    argv = ["--phase", "rtl_design", "--format", "ollama", "--output", str(out)]
    assert export_job.main(["--registry", tiny_registry["registry"], *argv]) == 0
    first = load_file(out / "base" / "model.safetensors")

    def rebase(data):
        for e in data["specialists"].values():
            e["base_model"] = str(other)

    assert export_job.main(["--registry", edited_registry(tiny_registry, tmp_path, rebase), *argv]) == 0
    saved, want = load_file(out / "base" / "model.safetensors"), load_file(other / "model.safetensors")
    assert saved.keys() == want.keys() and all(torch.equal(saved[k], want[k]) for k in want)
    assert not all(torch.equal(saved[k], first[k]) for k in first)
    assert json.loads((out / "base" / "chipforge-base.json").read_text())["base_model"] == str(other)


@pytest.mark.parametrize("fmt", ["ollama", "merged"])
@pytest.mark.parametrize("case", ["rank", "target_modules", "not_an_adapter"])
def test_an_adapter_that_does_not_fit_the_base_is_a_clear_error(tiny_registry, tmp_path, capsys, case, fmt):
    """An adapter whose rank or target modules disagree with its weights/base, or a directory that is no
    adapter, fails with one line naming the specialist, the adapter and the problem (before: the merged
    export printed PEFT's traceback and the ollama export wrote a Modelfile that ollama create rejects)."""
    bad = tmp_path / "adapter"
    shutil.copytree(json.loads(Path(tiny_registry["registry"]).read_text())["specialists"]["rtl_design"][
        "adapter_path"], bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    if case == "rank":
        config["r"] = config["r"] // 2
    elif case == "target_modules":
        config["target_modules"] = ["no_such_proj"]
    (bad / "adapter_config.json").write_text(json.dumps(config))
    if case == "not_an_adapter":
        bad = tmp_path / "elsewhere"
        bad.mkdir()

    def point(data):
        data["specialists"]["rtl_design"]["adapter_path"] = str(bad)

    out = tmp_path / "out"
    argv = ["--registry", edited_registry(tiny_registry, tmp_path, point), "--phase", "rtl_design", "--format", fmt,
            "--output", str(out)]
    assert export_job.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"chipforge-rtl_design: adapter {bad} does not fit base" in err, err
    assert {"rank": "rank or base model do not match", "target_modules": "not in the adapter's target_modules",
            "not_an_adapter": "has no adapter_config.json"}[case] in err
    assert not (out / "chipforge-rtl_design").exists()


def test_merged_files_are_uploaded_streamed_not_read_whole(s3_env, tmp_path: Path) -> None:
    """A merged model's shard (tens of GB for a 7B base) was read into memory whole before its upload; it is
    streamed now: Python allocates far less than the file's size, and every file arrives intact."""
    import tracemalloc

    from chipforge import fs
    from serving.export import _upload
    from tests.conftest import make_bucket

    src = tmp_path / "merged"
    (src / "sub").mkdir(parents=True)
    big = os.urandom(1024**2) * 48  # 48 MiB
    (src / "model.safetensors").write_bytes(big)
    (src / "sub" / "config.json").write_text('{"a": 1}')
    dest = make_bucket(s3_env, "cf-export-stream") + "/merged"
    tracemalloc.start()
    try:
        _upload(str(src), dest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024**2, f"{peak / 1024**2:.0f} MiB allocated uploading a 48 MiB file"
    assert fs.read_bytes(f"{dest}/model.safetensors") == big
    assert fs.read_text(f"{dest}/sub/config.json") == '{"a": 1}'
