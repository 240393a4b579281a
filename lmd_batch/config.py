"""Job files: YAML validated by pydantic v2 models (unknown keys are errors).

A job file says what to compute (input prompts, LLM and diffusion settings, seeds) and where and
how (run folder URL, Ray address, per-stage resources). Only the "what" part goes into the config
fingerprint that guards a run folder against being resumed with different settings.

Relative paths in a job file are resolved against the folder that holds the job file, so a job
file and its prompt file can travel together.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmd_batch.errors import JobFileError

URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class Section(BaseModel):
    """Base of every job-file section: unknown keys are errors; some fields are not fingerprinted."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # Fields that change where/how fast work runs but never what it produces.
    not_in_fingerprint: ClassVar[frozenset[str]] = frozenset()

    def fingerprint_dict(self) -> dict[str, Any]:
        out = {}
        for name in type(self).model_fields:
            if name in self.not_in_fingerprint:
                continue
            value = getattr(self, name)
            if isinstance(value, Section):
                value = value.fingerprint_dict()
            out[name] = value
        return out


class InputConfig(Section):
    """Where the prompts come from and how they are checked and sharded."""

    not_in_fingerprint = frozenset({"storage_options"})

    prompts: list[str] = Field(
        description="Prompt file(s): path, glob or fsspec URL. Parquet/JSONL/CSV (column "
        "'prompt', optional 'id' and 'samples') or plain text, one prompt per line."
    )
    format: Literal["auto", "parquet", "jsonl", "csv", "text"] = "auto"
    storage_options: dict[str, Any] = Field(default_factory=dict)
    max_prompt_chars: int = Field(2000, ge=1, description="Longer prompts become reject rows.")
    shard_rows: int = Field(1000, ge=1, le=10_000_000, description="Input rows per shard.")
    samples: int = Field(1, ge=1, le=1000, description="Layouts/images per prompt unless a row says otherwise.")

    @field_validator("prompts", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        if isinstance(v, str):
            return [v]
        return v

    @field_validator("prompts")
    @classmethod
    def _not_empty(cls, v):
        if not v or any(not s.strip() for s in v):
            raise ValueError("give at least one prompt file, and no empty entries")
        return v


class RunConfig(Section):
    """The run folder: any fsspec URL (file://, s3://, gs://, memory://) or a local path."""

    not_in_fingerprint = frozenset({"url", "storage_options", "cache_url"})

    url: str = Field(description="Run folder. Overridden by `lmd-batch run --run URL`.")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    cache_url: str | None = Field(
        None, description="Content-addressed cache shared by runs; default: 'cache' beside the run folder."
    )


class StageResources(Section):
    """Ray resources of one stage's worker pool."""

    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float = Field(0, ge=0)
    pool_size: int = Field(1, ge=1, description="Number of actors in the stage's pool.")


class RayConfig(Section):
    """Where the work runs. None of it is fingerprinted: the same job runs anywhere."""

    not_in_fingerprint = frozenset({"address", "executor", "num_cpus", "stages", "object_store_mb"})

    executor: Literal["ray", "local"] = Field(
        "ray", description="'ray' (default) or 'local': in-process, one shard at a time (debugging, memory://)."
    )
    address: str | None = Field(None, description="Join this Ray cluster; default: RAY_ADDRESS or a local one.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray cluster (default: all).")
    object_store_mb: int | None = Field(None, ge=64, description="Object store size of a local Ray cluster.")
    stages: dict[str, StageResources] = Field(default_factory=dict, description="Per-stage resources by stage name.")


class LLMConfig(Section):
    """Stage 1 (prompt -> layout) settings. LMD's defaults: temperature 0.25, stop on a blank line."""

    not_in_fingerprint = frozenset({"url", "api_key_env", "concurrency", "timeout_s", "retries", "replicas",
                                    "replica_gpus", "python", "startup_timeout_s", "max_model_len"})

    model: str = Field("smollm2-135m", description="Built-in name, Hugging Face id, local folder or fsspec URL.")
    url: str | None = Field(None, description="Existing OpenAI-compatible endpoint; default: start a managed vLLM server.")
    api_key_env: str | None = Field(None, description="Environment variable holding the endpoint's API key.")
    mode: Literal["chat", "completion"] = "chat"
    structured: bool = Field(True, description="Constrain outputs with a JSON schema (vLLM structured outputs).")
    template: str = "lmd-batch-v1"
    temperature: float = Field(0.25, ge=0, le=2)
    max_tokens: int = Field(900, ge=16)
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(300, gt=0)
    retries: int = Field(3, ge=0)
    replicas: int = Field(0, ge=0, description="On a Ray cluster: number of vLLM server actors (0 = one managed server).")
    replica_gpus: float = Field(1, ge=0, description="GPUs each replica actor holds.")
    python: str | None = Field(None, description="Python with vllm for managed servers/replicas; default: "
                               "$LMD_BATCH_LLM_PYTHON, else .venv-llm.")
    startup_timeout_s: float = Field(600, gt=0, description="How long a managed server may take to answer /health.")
    max_model_len: int = Field(2048, ge=256, description="Context length of managed servers.")
    max_boxes: int = Field(16, ge=1, le=100, description="Boxes kept per layout (the rest are dropped, noted).")
    given_layouts: str | None = Field(
        None, description="JSONL (path or URL) of {prompt_id, layout}: those prompts take the given layout (LMD "
                          "text or JSON; ground truth, another system's) instead of asking the LLM.")


class DiffusionConfig(Section):
    """Stage 2 settings; defaults are LMD's (see LMD-REFERENCE.md section 2.7)."""

    not_in_fingerprint = frozenset({"box_batch_size"})

    method: Literal["lmd", "lmd_plus", "sd", "gligen"] = "lmd"
    methods: list[Literal["lmd", "lmd_plus", "sd", "gligen"]] | None = Field(
        None, min_length=1, description="Several methods on the same layouts and seeds, e.g. [sd, gligen, lmd, "
        "lmd_plus] for a comparison (one image per layout and method); overrides `method`.")
    model: str = "tiny-sd"
    gligen_model: str = "tiny-gligen"
    sam_model: str = "tiny-sam"
    mask: Literal["sam", "attention", "box"] = "sam"
    steps: int = Field(50, ge=1, le=1000)
    size: int = Field(512, ge=64, le=2048, multiple_of=64)
    guidance_scale: float = Field(7.5, ge=0)
    frozen_step_ratio: float = Field(0.5, ge=0, le=1)
    fg_blending_ratio: float | None = Field(None, ge=0, le=1, description="Default 0.01 (LMD) / 0.1 (LMD+).")
    guidance_steps: int = Field(30, ge=0, description="Denoising steps with attention guidance (of 50).")
    overall_guidance_steps: int | None = Field(
        None, ge=0, description="Guided steps of the overall (composition) pass; default: guidance_steps. "
        "A composition setting: changing it reuses every cached box latent.")
    loss_scale: float = Field(5.0, ge=0)
    loss_threshold: float = Field(5.0, ge=0)
    ref_ca_loss_weight: float = Field(2.0, ge=0)
    energy_tokens: Literal["all", "prompt"] = Field(
        "all", description="Attention the box energy reads: 'all' = the raw softmax over every token column (LMD); "
        "'prompt' = renormalised over the prompt's own word tokens (Attend-and-Excite's way), for models that put "
        "most attention on padding (shapes-sd), where the raw energy is saturated and guidance only erases objects.")
    negative_prompt: Literal["lmd", "llm", "none"] = Field(
        "lmd", description="Negative prompts of stage 2: 'lmd' = the LLM's negative plus LMD's default terms "
        "('artifacts, blurry, ..., duplicate, two, many'; the baselines get the LLM's alone); 'llm' = the LLM's "
        "negative alone; 'none' = no negative prompt in any run (negation then comes from the layout alone). "
        "shapes-sd uses 'none': it never saw the default words, and CFG against a negative phrase ('purple "
        "stars') shifts its colours (LMD negation 50% with it, 94% without).")
    gligen_beta: float = Field(0.4, ge=0, le=1)
    box_batch_size: int = Field(8, ge=1)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights' dtype: auto = float16 on CUDA, float32 on CPU. Latents stay float32.")

    @model_validator(mode="after")
    def _distinct_methods(self):
        if self.methods is not None and len(set(self.methods)) != len(self.methods):
            raise ValueError("diffusion.methods lists a method twice")
        return self

    def run_methods(self) -> list[str]:
        """The methods this job draws, in order: `methods` when given, else [`method`]."""
        return list(self.methods) if self.methods else [self.method]


class EvaluationConfig(Section):
    """The evaluate stage: LMD's OWL-ViT protocol (LMD-REFERENCE.md 3.2) and box verification."""

    detector: str = Field("tiny-owlvit", description="OWL-ViT: built-in name, Hugging Face id (the benchmark "
                          "uses google/owlvit-base-patch32), local folder or fsspec URL; or 'shapes': the "
                          "classical shapes detector and the shapes benchmark's predicates.")
    score_threshold: float = Field(0.15, ge=0, le=1, description="Keep detections scoring at least this.")
    nms_threshold: float = Field(0.15, ge=0, le=1, description="Drop a detection overlapping a better one by "
                                 "IoU above this.")
    class_aware_nms: bool = Field(True, description="NMS within each query label only (the protocol's setting).")
    verify_iou: float = Field(0.5, ge=0, le=1, description="A layout box counts as confirmed by a detection of "
                              "its caption overlapping it by at least this IoU.")


class Job(Section):
    """A whole job file."""

    # `stages` is not fingerprinted: a run may be resumed with more stages (each shard's outputs
    # depend only on its own stage's settings and upstream digests).
    not_in_fingerprint = frozenset({"name", "run", "ray", "stages"})

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    input: InputConfig
    run: RunConfig
    ray: RayConfig = Field(default_factory=RayConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    seed: int = Field(0, ge=0, lt=2**63, description="Job seed: every random draw derives from it.")
    stages: list[str] | None = Field(None, description="Stages to run, in order; default: every stage available.")

    @model_validator(mode="after")
    def _known_stages(self):
        from lmd_batch.pipeline.registry import stage_names

        known = stage_names()
        if self.stages is not None:
            unknown = [s for s in self.stages if s not in known]
            if unknown:
                raise ValueError(f"unknown stage(s) {unknown}; available: {known}")
            if len(set(self.stages)) != len(self.stages):
                raise ValueError("a stage is listed twice")
        for name in self.ray.stages:
            if name not in known:
                raise ValueError(f"ray.stages names unknown stage '{name}'; available: {known}")
        return self

    def fingerprint(self) -> str:
        """sha256 over the settings that determine outputs (not where or how fast they run)."""
        blob = json.dumps(self.fingerprint_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def selected_stages(self) -> list[str]:
        from lmd_batch.pipeline.registry import stage_names

        return list(self.stages) if self.stages is not None else stage_names()

    def resources(self, stage: str) -> StageResources:
        return self.ray.stages.get(stage, StageResources())

    def public_dict(self) -> dict[str, Any]:
        """The resolved config as written to run.json and printed by `validate` (no secrets in it:
        the API key is only ever named by its environment variable)."""
        return self.model_dump(mode="json")


def resolve_location(value: str, base: Path) -> str:
    """A URL stays as it is; a local path becomes absolute, relative to `base`."""
    if URL_SCHEME.match(value):
        if value.startswith("file://"):
            return str(Path(value[len("file://"):]).resolve())
        return value
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p).resolve())


def _format_loc(loc: tuple) -> str:
    parts = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def validation_problems(exc: ValidationError) -> list[str]:
    """One line per problem: 'field.path: message (got value)'."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = _format_loc(tuple(x for x in err["loc"] if x not in ("function-after",)))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here; check the spelling)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        got = err.get("input")
        suffix = ""
        if err["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict):
            shown = repr(got)
            suffix = f" (got {shown[:60]}{'...' if len(shown) > 60 else ''})"
        problems.append(f"{loc}: {msg}{suffix}")
    return problems


def load_job(path: str | Path, run_url: str | None = None) -> Job:
    """Read, validate and resolve a job file. Raises JobFileError listing every problem."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise JobFileError(str(path), ["job file not found"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise JobFileError(str(path), ["not a UTF-8 text file"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise JobFileError(str(path), [f"malformed YAML: {where}{problem}"]) from None
    if not isinstance(raw, dict):
        raise JobFileError(str(path), ["the job file must be a YAML mapping (key: value lines)"])
    try:
        job = Job.model_validate(raw)
    except ValidationError as exc:
        raise JobFileError(str(path), validation_problems(exc)) from None
    base = path.resolve().parent
    job.input.prompts = [resolve_location(p, base) for p in job.input.prompts]
    job.run.url = resolve_location(run_url, Path.cwd()) if run_url else resolve_location(job.run.url, base)
    if job.run.cache_url:
        job.run.cache_url = resolve_location(job.run.cache_url, base)
    if job.llm.given_layouts:
        job.llm.given_layouts = resolve_location(job.llm.given_layouts, base)
    return job
