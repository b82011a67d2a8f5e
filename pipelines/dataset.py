"""The dataset pipeline: corpus modules + doc chunks → per-phase, per-split chat examples.

Ray Data maps the example builders (actor classes that load the phase classifier once) over
module rows (``DIR/modules/``) and doc chunks (``DIR/docs/``), then decontaminates
against local benchmark checkouts in a second map stage. The driver reads back only
(id, phase, group, skip) to count drops, apply the per-repository cap and assign each group
(repository for modules, documentation page for docs: corpus.splits) to one split, so that every
phase's splits meet ``split_min_examples`` where the phase has groups enough (corpus.splits.assign_by_phase;
a phase that cannot is a warning in the report); a last map stage applies
that and the driver streams rows into ``DIR/examples/phase=<p>/split=<s>/part-00000.parquet``
(one ParquetWriter per partition, the whole ``examples/`` directory renamed into place).

Router (triage) examples come from labelled questions (``corpus.router``, config ``router``),
never from the phase classifier: built on the driver (engine-written ones on Ray when
``router.engine`` is set), they join the tagged rows with groups ``router:<train|validation>``,
skip the repository cap and keep their own split; ``report["router"]`` scores a classifier
trained on them against the held-out ``router.eval_path``.

Doc examples ask a section-title question (no engine), or, with ``doc_questions.engine``, the
questions an engine wrote from each section whose answers the section supports
(``corpus.doc_questions``, generated on Ray before the build step); ``report["doc_questions"]``
counts generated, kept and dropped pairs per phase, and the drops are skip rows
``doc_question_<reason>`` in ``dropped`` and per phase and split.

With ``module_specs.engine``, the engine also writes a behavioural specification of each module
(``corpus.module_specs``: round 0 describes, round 1 regenerates the module from the description and
its header, compiled with iverilog in the sandbox, ports compared); a passing description is the spec
of the module's ``write_module`` example, a failing one a skip row ``module_spec_<reason>`` (the
comment-based spec stays the fallback); ``report["module_specs"]`` counts them.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from chipforge import fs
from chipforge.config import Config
from chipforge.job import JobError, JobSpec, Run
from chipforge.stage import StageResources, cluster_cpus, fit_to_cluster, map_stage, read_cpus
from corpus.dataset import (DOC_REQUIRED, INVALID_ROW, MODULE_REQUIRED, ApplySplits, DecontamStage, DocStage, ModuleStage,
                            cap_per_group, check_input_files, incompatible_files, input_files)
from corpus.doc_questions import DocQuestionsConfig
from corpus.module_specs import ModuleSpecsConfig
from corpus.router import RouterConfig, build_examples, is_router_group, prompt_rows, score_router
from corpus.router import tagged as tagged_router
from corpus.schema import DOCS_SCHEMA, EXAMPLES_SCHEMA, MODULES_SCHEMA, SchemaError, conform
from corpus.splits import DEFAULT_MIN_EXAMPLES, assign_by_phase


def _resources() -> StageResources:
    """Module, doc and decontamination actors run at the same time beside the read tasks;
    :func:`chipforge.stage.fit_to_cluster` shrinks them further on a small machine."""
    return StageResources(batch_size=256, num_cpus=0.5, concurrency=1)


class DatasetConfig(Config):
    corpus_dir: str | None = "out/sample/corpus"  # reads DIR/modules/ (older corpora: hive repo=<name>/); None: no modules
    docs_dir: str | None = "out/sample/docs"  # reads DIR/docs/; None: no docs
    output_dir: str = "out/sample/dataset"
    seed: int = 0
    split_ratios: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1})
    # per phase: at least this many examples in each split, where the phase has enough groups
    # (train is filled first, then validation, then test); a phase that cannot is a report warning
    split_min_examples: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_MIN_EXAMPLES))
    max_group_share: float = 0.25  # per phase, per repository / doc page (floor: see corpus.dataset.cap_per_group)
    min_comment_chars: int = 20  # modules whose header comment is shorter are skipped (no description)
    max_error_share: float = 0.05  # modules with a larger share of lines in parse ERROR nodes are skipped
    min_doc_chars: int = 80  # shorter doc chunks are skipped
    classify_modules: bool = True  # let a confident classifier move a module out of rtl_design
    module_min_confidence: float = 0.6
    classifier_path: str | None = None  # None: train from the shipped set (corpus/data/phase_train.jsonl)
    benchmark_paths: list[str] = Field(default_factory=list)  # VerilogEval / RTLLM checkouts
    router: RouterConfig = Field(default_factory=RouterConfig)  # triage examples: labelled questions (corpus.router)
    # doc examples: engine-written questions checked against their section (corpus.doc_questions); no engine: titles
    doc_questions: DocQuestionsConfig = Field(default_factory=DocQuestionsConfig)
    # write_module specs: engine-written descriptions checked by regeneration (corpus.module_specs); no engine: comments
    module_specs: ModuleSpecsConfig = Field(default_factory=ModuleSpecsConfig)
    ngram: int = 13
    modules: StageResources = Field(default_factory=_resources)
    docs: StageResources = Field(default_factory=_resources)
    decontam: StageResources = Field(default_factory=_resources)
    write: StageResources = Field(default_factory=_resources)

    @model_validator(mode="after")
    def _check_split_minimums(self) -> "DatasetConfig":
        unknown = sorted(set(self.split_min_examples) - set(self.split_ratios))
        if unknown or any(v < 0 for v in self.split_min_examples.values()):
            raise ValueError(f"split_min_examples {self.split_min_examples} must map splits of split_ratios "
                             f"({list(self.split_ratios)}) to counts >= 0")
        return self


def _dist(xs: list[int]) -> dict[str, int]:
    if not xs:
        return {}
    s = sorted(xs)
    q = lambda p: s[min(len(s) - 1, int(p * (len(s) - 1)))]  # noqa: E731
    return {"min": s[0], "p50": q(0.5), "p90": q(0.9), "max": s[-1]}


def router_data(cfg: DatasetConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Router (triage) examples and their report: the labelled questions, plus engine-written
    ones when ``router.engine`` is set and ``router.per_phase`` > 0 (generated on Ray)."""
    rc = cfg.router
    if rc.engine is None or rc.per_phase == 0:
        return build_examples(rc)
    import ray

    from pipelines.synthesis import make_engine
    from synthesis.engines import local_model_problem

    problem = local_model_problem(rc.engine.hf.model_path, rc.engine.hf.allow_download) if rc.engine.name == "hf" else None
    if problem:
        raise JobError(f"router.{problem}")
    prompts = prompt_rows(rc.per_phase, seed=rc.seed)
    engine, _ = make_engine(rc.engine)
    return build_examples(rc, engine(ray.data.from_items(prompts)).take_all(), prompts)


def engine_step_setup(engine: Any, field: str, input_dir: str, sub: str, writer: str,
                      input_stage: tuple[str, StageResources], job: Run | None) -> tuple[str, dict[str, StageResources], dict[str, Any]]:
    """Set-up shared by the engine steps (doc questions, module specs): the local model exists
    (else ``JobError`` naming ``field``), ``input_dir/sub`` exists (else one naming the job that
    writes it), and the input, check and engine stages are fitted to the cluster together.
    Returns (the input path, the fitted resources, ``read_parquet`` options)."""
    from pipelines.synthesis import hf_resources
    from synthesis.engines import local_model_problem

    problem = local_model_problem(engine.hf.model_path, engine.hf.allow_download) if engine.name == "hf" else None
    if problem:
        raise JobError(f"{field}.{problem}")
    path = fs.join(input_dir, sub)
    if not fs.exists(path):
        raise JobError(f"{input_dir} has no {sub}/ directory: is it the output of {writer}?")
    stages = {input_stage[0]: input_stage[1], "check": StageResources(num_cpus=0.25, concurrency=1, batch_size=16),
              **({"engine": hf_resources(engine.hf)} if engine.name == "hf" else {})}
    total = cluster_cpus()
    res = fit_to_cluster(stages, total, say=job.progress if job else None)
    n = read_cpus(res, total)
    return path, res, ({"num_cpus": n} if n is not None else {})


# --- doc questions (corpus.doc_questions) ---
def doc_question_data(cfg: DatasetConfig, job: Run | None = None) -> tuple[Any, dict[str, Any]]:
    """(tagged Ray dataset of the engine-written doc examples, their report); (None, report) with no engine.

    Doc chunks → prompts (``DocPromptStage``: the classifier's phase, the same eligibility as
    ``DocStage``) → ``doc_questions.engine`` → ``check_batch`` (parse, support check, title
    fallback where nothing is kept), materialized so the report can count its outcomes. The
    actor pools are fitted to the cluster together, as in :func:`plan_resources`."""
    dq = cfg.doc_questions
    if dq.engine is None or not cfg.docs_dir:
        return None, {"engine": None, "mode": "section-title questions (no engine)"}
    import ray

    from corpus.doc_questions import TEMPLATE, DocPromptStage, check_batch, tally
    from pipelines.synthesis import make_engine

    docs_dir, res, read_opts = engine_step_setup(dq.engine, "doc_questions", cfg.docs_dir, "docs", "the docs job",
                                                 ("docs", cfg.docs), job)
    settings = dq.model_dump(mode="json", exclude={"engine"})
    generator = dq.engine.generator(TEMPLATE)
    prompts = map_stage(ray.data.read_parquet(docs_dir, **read_opts), DocPromptStage,
                        res["docs"], kwargs={"settings": settings, "model_path": cfg.classifier_path,
                                             "min_chars": cfg.min_doc_chars})
    engine, _ = make_engine(dq.engine, hf=res.get("engine"))
    checked = map_stage(engine(prompts), check_batch, res["check"],
                        kwargs={"settings": settings, "generator": generator}).materialize()
    report = {"engine": generator, "random_weights": dq.engine.random_weights, "per_section": dq.per_section,
              "kinds": list(dq.kinds), "min_support": dq.min_support,
              **tally(checked.select_columns(["phase", "outcome"]).take_all())}
    return checked.drop_columns(["outcome"]), report
# --- end doc questions ---


# --- module specs (corpus.module_specs) ---
def module_spec_data(cfg: DatasetConfig, job: Run | None = None) -> tuple[Any, dict[str, Any]]:
    """(tagged Ray dataset of the engine-spec write_module examples and their drops, their report);
    (None, report) with no engine.

    Modules → round-0 prompts (``SpecPromptStage``: ModuleStage's phase and eligibility) → engine →
    (descriptions that pass: round-1 prompts → the same engine → ``check_batch``, regeneration
    compiled in the sandbox) ∪ (``describe_drops``: the failed descriptions), materialized so the
    report can count its outcomes."""
    mc = cfg.module_specs
    if mc.engine is None or not cfg.corpus_dir:
        return None, {"engine": None, "mode": "specs from the author's comments and the header (no engine)"}
    import ray

    from corpus.module_specs import TEMPLATE, SpecPromptStage, check_batch, describe_drops, regen_batch, tally
    from pipelines.synthesis import make_engine

    mods_dir, res, read_opts = engine_step_setup(mc.engine, "module_specs", cfg.corpus_dir, "modules", "the corpus job",
                                                 ("modules", cfg.modules), job)
    settings = mc.model_dump(mode="json", exclude={"engine"})
    generator = mc.engine.generator(TEMPLATE)
    prompts = map_stage(ray.data.read_parquet(mods_dir, **read_opts), SpecPromptStage,
                        res["modules"], kwargs={"settings": settings, "min_comment_chars": cfg.min_comment_chars,
                                                "max_error_share": cfg.max_error_share, "classify": cfg.classify_modules,
                                                "model_path": cfg.classifier_path,
                                                "min_confidence": cfg.module_min_confidence})
    engine, _ = make_engine(mc.engine, hf=res.get("engine"))
    described = engine(prompts).materialize()
    failed = map_stage(described, describe_drops, res["check"],
                       kwargs={"settings": settings, "min_comment_chars": cfg.min_comment_chars})
    regen = map_stage(described, regen_batch, res["check"], kwargs={"settings": settings}).materialize()
    checked = map_stage(engine(regen), check_batch, res["check"],
                        kwargs={"settings": settings, "generator": generator,
                                "min_comment_chars": cfg.min_comment_chars}) if regen.count() else None
    out = (failed.union(checked) if checked is not None else failed).materialize()
    report = {"engine": generator, "random_weights": mc.engine.random_weights,
              **tally(out.select_columns(["phase", "outcome"]).take_all())}
    return out.drop_columns(["outcome"]), report
# --- end module specs ---


def plan_resources(cfg: DatasetConfig, total_cpus: float, say: Any = None) -> tuple[dict[str, StageResources], dict[str, float]]:
    """(actor pool resources by stage, read_parquet options) that fit ``total_cpus`` together.

    The module, doc and decontamination pools run at the same time as the Parquet read tasks;
    pools that take every CPU (three 0.5-CPU pools on 2 CPUs) leave the reads waiting forever
    (issue 13). :func:`chipforge.stage.fit_to_cluster` scales the pools to leave a CPU free and
    :func:`chipforge.stage.read_cpus` sizes the reads to what is left (a fraction on 1 CPU).
    """
    stages = {"modules": cfg.modules, "docs": cfg.docs, **({"decontam": cfg.decontam} if cfg.benchmark_paths else {})}
    res = fit_to_cluster(stages, total_cpus, say=say)
    n = read_cpus(res, total_cpus)
    return res, ({"num_cpus": n} if n is not None else {})


def rejected_files(cfg: DatasetConfig) -> dict[str, str]:
    """Module and doc Parquet files whose column types do not fit their schema (path → why): they
    are not read (``corpus.dataset.incompatible_files``), and the report lists them."""
    out: dict[str, str] = {}
    for given, sub, schema in ((cfg.corpus_dir, "modules", MODULES_SCHEMA), (cfg.docs_dir, "docs", DOCS_SCHEMA)):
        if given and fs.exists(fs.join(given, sub)):
            out.update(incompatible_files(fs.join(given, sub), schema))
    return out


def read_inputs(root: str, bad_files: dict[str, str], read: dict[str, Any]) -> Any:
    """``ray.data.read_parquet`` of ``root``, less the ``bad_files`` under it (hive partition
    columns still parsed below ``root``); a JobError when no file is left."""
    import ray
    from ray.data.datasource import Partitioning

    bad = [p for p in bad_files if p.startswith(root.rstrip("/") + "/")]
    if not bad:
        return ray.data.read_parquet(root, **read)
    good = [p for p, _, _ in input_files(root) if p not in bad_files]
    if not good:
        raise JobError(f"every Parquet file in {root} was rejected, nothing usable remains: "
                       + "; ".join(f"{p}: {bad_files[p]}" for p in bad))
    return ray.data.read_parquet(good, partitioning=Partitioning("hive", base_dir=root), **read)


def build(cfg: DatasetConfig, job: Run | None = None, router: Any = None, doc_questions: Any = None,
          module_specs: Any = None, bad_files: dict[str, str] | None = None) -> Any:
    """Tagged examples (corpus.dataset.TAGGED_SCHEMA) from modules, docs and ``router`` (a tagged
    table of router examples, corpus.router.tagged), decontaminated. ``doc_questions``: the
    engine-written doc examples (:func:`doc_question_data`); then ``DocStage`` only counts skips.
    ``module_specs``: the engine-spec write_module examples (:func:`module_spec_data`); then
    ``ModuleStage`` leaves the write_module example of every prompted module to them.
    ``bad_files``: input files not to read (:func:`rejected_files`, computed when None)."""
    import ray

    mods_dir = fs.join(cfg.corpus_dir, "modules") if cfg.corpus_dir else ""
    docs_dir = fs.join(cfg.docs_dir, "docs") if cfg.docs_dir else ""
    for given, sub in ((cfg.corpus_dir, mods_dir), (cfg.docs_dir, docs_dir)):
        if given and not fs.exists(sub):
            raise JobError(f"{given} has no {sub.rsplit('/', 1)[-1]}/ directory: is it the output of the "
                           f"{'corpus' if sub == mods_dir else 'docs'} job?")
    try:
        if mods_dir:
            check_input_files(mods_dir, MODULE_REQUIRED, "modules")
        if docs_dir:
            check_input_files(docs_dir, DOC_REQUIRED, "docs")
    except SchemaError as exc:
        raise JobError(str(exc)) from exc
    if bad_files is None:
        bad_files = rejected_files(cfg)
    res, read = plan_resources(cfg, cluster_cpus(), say=job.progress if job else None)
    parts = []
    if mods_dir:
        # repo is a column; Ray's default hive partitioning also reads older repo=<name>/ layouts.
        parts.append(map_stage(read_inputs(mods_dir, bad_files, read), ModuleStage, res["modules"], kwargs=
                          {"min_comment_chars": cfg.min_comment_chars, "max_error_share": cfg.max_error_share,
                           "classify": cfg.classify_modules, "model_path": cfg.classifier_path,
                           "min_confidence": cfg.module_min_confidence,
                           "specs_max_chars": cfg.module_specs.max_source_chars if module_specs is not None else None}))
    if docs_dir:
        parts.append(map_stage(read_inputs(docs_dir, bad_files, read), DocStage, res["docs"],
                               kwargs={"model_path": cfg.classifier_path, "min_chars": cfg.min_doc_chars,
                                       "titles": doc_questions is None}))
    if doc_questions is not None:  # --- doc questions ---
        parts.append(doc_questions)
    if module_specs is not None:  # --- module specs ---
        parts.append(module_specs)
    if not parts:
        raise JobError("no input: set corpus_dir (--corpus) and/or docs_dir (--docs)")
    if router is not None and router.num_rows:
        parts.append(ray.data.from_arrow(router))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    if cfg.benchmark_paths:
        ds = map_stage(ds, DecontamStage, res["decontam"], kwargs={"benchmark_paths": cfg.benchmark_paths, "n": cfg.ngram})
    return ds.materialize()


def run(cfg: DatasetConfig, job: Run) -> dict[str, Any]:
    """The job's body: example builders and decontamination on Ray Data; splits assigned on the driver."""
    t0 = time.time()
    with job.step("router questions"):
        router_rows, router_report = router_data(cfg)
    with job.step("doc questions"):
        doc_q, doc_q_report = doc_question_data(cfg, job)
    with job.step("module specs"):
        mod_specs, mod_specs_report = module_spec_data(cfg, job)
    with job.step("build examples"):
        bad_files = rejected_files(cfg)
        for path, why in list(bad_files.items())[:5]:
            job.progress(f"warning: not read: {path}: {why}")
        tagged = build(cfg, job, router=tagged_router(router_rows), doc_questions=doc_q, module_specs=mod_specs,
                       bad_files=bad_files)
    # Driver: small metadata only (id, phase, group, skip) → drops, cap, split map.
    meta = tagged.select_columns(["id", "phase", "group", "skip"]).take_all()
    dropped: Counter[str] = Counter()
    contaminated: Counter[str] = Counter()
    contaminated_by_method: Counter[str] = Counter()  # an example caught by both counts under both
    # (phase, group) → reason → removed, for the per-phase, per-split report (phase None: an invalid row)
    removed: dict[tuple[str | None, str], Counter[str]] = defaultdict(Counter)
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    invalid_rows: list[str] = []  # the first few input rows that did not fit their schema, and why
    for m in sorted(meta, key=lambda m: (m["id"] or "", m["group"] or "")):
        if m["skip"]:
            reason = m["skip"].split(":")[0]
            if reason == INVALID_ROW and len(invalid_rows) < 20:
                invalid_rows.append(f"{m['group']} id {m['id']}: {m['skip'].split(':', 1)[1]}")
            dropped[reason] += 1
            removed[(m["phase"], m["group"])][reason] += 1
            if m["skip"].startswith("contaminated:"):
                _, suite, methods = m["skip"].split(":", 2)
                contaminated[suite] += 1
                for method in methods.split("+"):
                    contaminated_by_method[method] += 1
        elif m["id"] in seen:
            dropped["duplicate_example"] += 1
            removed[(m["phase"], m["group"])]["duplicate_example"] += 1
        else:
            seen.add(m["id"])
            rows.append(m)
    # Router rows keep their own split (train/validation by question, corpus.router): no repository cap.
    routed = [r for r in rows if is_router_group(r["group"])]
    corpus_rows = [r for r in rows if not is_router_group(r["group"])]
    # the cap's unit is the split group: a repository, or a documentation page (a tool's manual is
    # expected to dominate its phase; a capped source left thin phases such as timing with a handful)
    if bad_files:
        dropped["bad_file"] = len(bad_files)
    rows, n_capped = cap_per_group(corpus_rows, "group", cfg.max_group_share)
    dropped["repo_cap"] += n_capped
    kept_pairs = {(r["id"], r["group"]) for r in rows}
    for r in corpus_rows:
        if (r["id"], r["group"]) not in kept_pairs:
            removed[(r["phase"], r["group"])]["repo_cap"] += 1
    rows += routed
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        counts[r["group"]][r["phase"]] += 1
    plan = assign_by_phase(counts, cfg.split_ratios, cfg.split_min_examples, seed=cfg.seed,
                           pinned={g: g.split(":", 1)[1] for g in {r["group"] for r in routed}})
    split_of = plan.split_of
    for w in plan.warnings:
        job.progress(f"warning: {w}")
    keep = {(r["id"], r["group"]) for r in rows}
    examples = map_stage(tagged, ApplySplits, cfg.write, kwargs={"split_of": split_of, "keep": keep})
    stats: dict[tuple[str, str], dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    with fs.atomic_dir(fs.join(cfg.output_dir, "examples")) as tmp:
        writers: dict[tuple[str, str], pq.ParquetWriter] = {}
        try:
            for batch in examples.iter_batches(batch_format="pyarrow", batch_size=4096):
                table = conform(batch, EXAMPLES_SCHEMA, stage="dataset.write")
                for r in table.select(["phase", "split", "task", "source", "prompt_tokens", "completion_tokens"]).to_pylist():
                    st = stats[(r["phase"], r["split"])]
                    for k in ("task", "source"):
                        st[k].append(r[k])
                    st["tokens"].append(r["prompt_tokens"] + r["completion_tokens"])
                for (phase, split) in {(p, s) for p, s in zip(table.column("phase").to_pylist(), table.column("split").to_pylist())}:
                    mask = pc.and_(pc.equal(table.column("phase"), phase), pc.equal(table.column("split"), split))
                    if (phase, split) not in writers:
                        d = fs.join(tmp, f"phase={phase}", f"split={split}")
                        fs.makedirs(d)
                        writers[(phase, split)] = pq.ParquetWriter(fs.join(d, "part-00000.parquet"), EXAMPLES_SCHEMA)
                    writers[(phase, split)].write_table(table.filter(mask))
        finally:
            for w in writers.values():
                w.close()
    removed_at: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for (p, g), reasons in removed.items():
        removed_at[(p or "unknown", split_of.get(g, "unassigned"))].update(reasons)
    cells = sorted(set(stats) | set(removed_at) | {(p, s) for p, by in plan.counts.items() for s in by})
    per = {f"{p}/{s}": {"count": len(stats[(p, s)]["tokens"]) if (p, s) in stats else 0,
                        "groups": plan.groups.get(p, {}).get(s, 0),
                        "tokens": _dist(stats[(p, s)]["tokens"]) if (p, s) in stats else {},
                        "sources": dict(Counter(stats[(p, s)]["source"])) if (p, s) in stats else {},
                        "tasks": dict(Counter(stats[(p, s)]["task"])) if (p, s) in stats else {},
                        "removed": dict(sorted(removed_at[(p, s)].items()))}
           for p, s in cells}
    report = {"n_examples": sum(v["count"] for v in per.values()), "per_phase_split": per,
              "dropped": dict(dropped),
              "dropped_units": "inputs (modules, doc chunks) for skip reasons; examples for repo_cap, "
                               "duplicate_example and contaminated; engine-written question/answer pairs "
                               "(or whole replies) for doc_question_*; modules for module_spec_*; Parquet "
                               "files for bad_file (bad_files: path -> why it was not read)",
              "invalid_rows": invalid_rows, "bad_files": bad_files,
              "contaminated_per_benchmark": dict(contaminated),
                               "contaminated_per_method": dict(contaminated_by_method),
              "removed_units": "per_phase_split[...].removed: inputs by the phase the classifier gave them and "
                               "the split of their group ('unassigned': a group with no kept example)",
              "split_min_examples": cfg.split_min_examples, "split_warnings": plan.warnings,
              "groups_per_split": dict(Counter(split_of.values())), "split_of_group": split_of,
              "token_count": "approx: ceil(chars/4) of system+user (prompt) and assistant (completion)",
              "wall_s": round(time.time() - t0, 2)}
    phase_counts: Counter[str] = Counter()
    for (p, _), v in stats.items():
        phase_counts[p] += len(v["tokens"])
    report["per_phase"] = dict(sorted(phase_counts.items()))
    report["n_inputs"] = len(meta)
    kept_router = {r["id"] for r in routed}
    router_kept = [e for e in router_rows if e["id"] in kept_router]
    report["doc_questions"] = doc_q_report
    report["module_specs"] = mod_specs_report
    report["router"] = {**router_report, "n_in_dataset": len(router_kept),
                        "eval": score_router(router_kept, cfg.router.eval_path)}
    return report


def summary(report: dict[str, Any]) -> str:
    """Compact table: examples per phase and split (median tokens), then what was dropped."""
    splits = ("train", "validation", "test")
    # the first two lines stand alone (``--brief`` prints only them): totals, then what was dropped
    lines = [f"{report['n_examples']} examples from {report.get('n_inputs', '?')} inputs; "
             f"groups per split {report['groups_per_split']}",
             f"  dropped: {report['dropped'] or 'none'}; contaminated: {report['contaminated_per_benchmark'] or 'none'}",
             f"  {'phase':<16}" + "".join(f"{s:>11}" for s in splits) + "   tokens p50"]
    for phase in sorted(report["per_phase"]):
        cells = [report["per_phase_split"].get(f"{phase}/{s}", {}) for s in splits]
        p50 = max((c.get("tokens", {}).get("p50") or 0) for c in cells)
        lines.append(f"  {phase:<16}" + "".join(f"{c.get('count', 0):>11}" for c in cells) + f"   {p50:>10}")
    lines.extend(f"  warning: {w}" for w in report.get("split_warnings") or [])
    dq = report.get("doc_questions") or {}
    if dq.get("engine"):
        lines.append(f"  doc questions ({dq['engine']}): {dq['kept']} of {dq['generated']} generated pairs kept, "
                     f"{dq['fallback']} title fallbacks; dropped {dq['dropped'] or 'none'}")
    ms = report.get("module_specs") or {}
    if ms.get("engine"):
        lines.append(f"  module specs ({ms['engine']}): {ms['kept']} of {ms['prompted']} modules kept an engine spec, "
                     f"{ms['fallback']} comment fallbacks; dropped {ms['dropped'] or 'none'}")
    if report.get("router"):
        ev = report["router"]["eval"]
        lines.append(f"  router: {report['router']['n_in_dataset']} triage examples; a classifier trained on them scores "
                     f"macro-F1 {ev['macro_f1']:.3f} on the held-out {ev['n_eval']} ({ev['questions_macro_f1']:.3f} on its questions)")
    return "\n".join(lines)


def check_inputs(cfg: DatasetConfig) -> None:
    """Preflight (exit 2 before Ray): benchmark checkouts and the router's question files exist, and a
    given phase classifier artifact loads."""
    from chipforge.config import ConfigError
    from corpus.decontam import check_benchmark_paths

    check_benchmark_paths(cfg.benchmark_paths, "benchmark_paths")
    if cfg.classifier_path and fs.exists(cfg.classifier_path):  # a corrupt artifact: every actor would fail
        from corpus.phases import PhaseClassifier

        try:
            PhaseClassifier.read(cfg.classifier_path)
        except ValueError as exc:
            raise ConfigError(f"classifier_path: {exc}") from exc
    questions = (("router.questions_paths", cfg.router.questions_paths), ("router.eval_path", [cfg.router.eval_path]))
    for field, paths in questions:
        for p in paths:
            if p and not fs.exists(p):
                raise ConfigError(f"{field}: {p!r} does not exist")


SPEC = JobSpec(
    name="dataset", config=DatasetConfig, default_config="jobs/configs/dataset_sample.yaml", summary=summary,
    flags={"--corpus": "corpus_dir", "--docs": "docs_dir", "--output": "output_dir"},
    inputs={"corpus_dir": "a directory written by python -m jobs.build_corpus",
            "docs_dir": "a directory written by python -m jobs.scrape_docs",
            "classifier_path": "a phase classifier saved by corpus.phases"},
    volatile=("modules", "docs", "decontam", "write"),
    outputs=lambda r: r["n_examples"], inputs_count=lambda r: r["n_inputs"],
    extra_inputs=lambda cfg: {**{f"benchmark:{i}": p for i, p in enumerate(cfg.benchmark_paths)},
                              **{f"router:{i}": p for i, p in enumerate(cfg.router.questions_paths)},
                              "router:eval": cfg.router.eval_path},
    preflight=check_inputs,
    description=__doc__,
)
