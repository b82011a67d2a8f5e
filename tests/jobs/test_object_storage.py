"""The pipeline with every path on object storage (a local S3, moto's server: ``s3_env``), as a cluster runs it.

corpus → docs → dataset → fine-tune → evaluation → merged export, each job reading the previous one's
``s3://`` output and writing its own there, in the Ray workers and in the driver. The dataset must be the
bundled sample's, example for example: object storage changes where files are, not what is in them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from chipforge import fs
from jobs import build_corpus, build_dataset, evaluate, export, finetune, scrape_docs
from tests.conftest import make_bucket

REPO = Path(__file__).resolve().parents[2]


def _ids(examples: str) -> set[tuple[str, str, str]]:
    filesystem, inner = fs.resolve(examples)
    table = pads.dataset(inner, filesystem=filesystem, format="parquet", partitioning="hive").to_table(
        columns=["id", "phase", "split"])
    return set(zip(*(table.column(c).to_pylist() for c in ("id", "phase", "split"))))


@pytest.mark.integration
def test_pipeline_reads_and_writes_s3(ray_session, s3_env, tmp_path: Path, capsys) -> None:
    from training.tiny import save_tiny_model

    root = make_bucket(s3_env, "cf-pipeline") + "/run"
    corpus, docs, dataset = f"{root}/corpus", f"{root}/docs", f"{root}/dataset"
    assert build_corpus.main(["--config", "jobs/configs/corpus_sample.yaml", "--output", corpus, "--brief"]) == 0
    assert scrape_docs.main(["--config", "jobs/configs/docs_sample.yaml", "--output", docs, "--brief"]) == 0
    assert build_dataset.main(["--config", "jobs/configs/dataset_sample.yaml", "--corpus", corpus, "--docs", docs,
                               "--output", dataset, "--brief"]) == 0
    assert _ids(f"{dataset}/examples") == _ids(str(REPO / "sample" / "dataset" / "examples"))
    assert fs.read_json(f"{corpus}/report.json")["modules_kept"] == 25
    assert [fs.relative(p, corpus) for p in fs.listdir(corpus)] == ["_chipforge", "modules", "report.json",
                                                                    "repositories.parquet"]
    capsys.readouterr()
    assert build_corpus.main(["--config", "jobs/configs/corpus_sample.yaml", "--output", corpus]) == 0
    assert "up to date, skipped" in capsys.readouterr().out  # completion markers work there too

    # a tiny base on local disk (the "tiny" base is built into a local output only), everything else on S3
    texts = [json.dumps(r) for r in pads.dataset(str(REPO / "sample" / "dataset" / "examples"), format="parquet",
                                                  partitioning="hive").to_table(columns=["messages"]).to_pylist()]
    base = save_tiny_model(str(tmp_path / "base"), texts, vocab_size=400, hidden_size=32, num_layers=1,
                           num_heads=2, max_position_embeddings=1024)
    specialist, registry = f"{root}/specialists/synthesis", f"{root}/registry.json"
    assert finetune.main(["--config", "jobs/configs/finetune_tiny_cpu.yaml", "--dataset", dataset, "--phase",
                          "synthesis", "--output", specialist, f"base_model={base}", "scaling.num_workers=1",
                          "optim.micro_batch_size=1", "optim.epochs=2", f"registry={registry}", "--brief"]) == 0
    entry = fs.read_json(registry)["specialists"]["synthesis"]
    assert entry["adapter_path"] == f"{specialist}/adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        fs.relative(p, entry["adapter_path"]) for p in fs.listdir(entry["adapter_path"])}

    evaluation = f"{root}/evaluation"
    assert evaluate.main(["--config", "jobs/configs/evaluate_sample.yaml", "--registry", registry, "--dataset",
                          dataset, "--output", evaluation, "--phases", "synthesis", "generation.max_examples=2",
                          "smoke=false", "routing.enabled=false", "--brief"]) == 0
    report = fs.read_json(f"{evaluation}/report.json")
    losses = {m: r["loss"] for m, r in report["phases"]["synthesis"]["loss"].items()}
    assert set(losses) == {"base", "synthesis"} and all(v > 0 for v in losses.values())
    assert report["models"]["synthesis"]["adapter_path"] == entry["adapter_path"]
    assert fs.listdir(f"{evaluation}/samples", recursive=True, files_only=True)
    assert fs.read_json(registry)["specialists"]["synthesis"]["evaluation"]["report"] == f"{evaluation}/report.json"

    merged = f"{root}/export"
    assert export.main(["--registry", registry, "--phase", "synthesis", "--format", "merged",
                        "--output", merged]) == 0
    assert f"{merged}/chipforge-synthesis/config.json" in fs.listdir(f"{merged}/chipforge-synthesis")
