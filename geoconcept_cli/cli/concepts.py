"""`build-concepts` and `embed-concepts`: the concept set, mined and reviewed, and its CLIP
text basis."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import concepts as cs
from .. import model as models
from ..model.spec import ModelSpec
from ..runtime.progress import lazy_progress_bar
from .common import Commands, Model, cli_command, err, model_options, note, stdout


@cli_command
def build_concepts_cmd(
    out_dir: Annotated[Path, typer.Option(help="Where candidates.parquet is written.")] = Path(
        "concepts"
    ),
    review: Annotated[
        Path | None, typer.Option(help="Review CSV to merge into (default: OUT_DIR/review.csv).")
    ] = None,
    region: Annotated[
        list[str] | None,
        typer.Option(
            help="Region: a country, ISO code, continent, biome, or KEY=Article "
            "(repeatable; default: 7 continents, 43 countries, 12 biomes)."
        ),
    ] = None,  # fmt: skip
    finalize: Annotated[
        bool, typer.Option("--finalize", help="Write concepts.parquet from the kept rows.")
    ] = False,
    wikipedia: Annotated[bool, typer.Option(help="Mine Wikipedia region articles.")] = True,
    worldkg: Annotated[bool, typer.Option(help="Query WorldKG classes per region.")] = True,
    llm: Annotated[bool, typer.Option(help="Ask an LLM ($OPENAI_API_KEY) per region.")] = True,
    worldkg_endpoint: Annotated[
        str, typer.Option(help="SPARQL endpoint URL.")
    ] = "https://www.worldkg.org/sparql",
    wikipedia_api_url: Annotated[str | None, typer.Option(help="MediaWiki API mirror.")] = None,
    llm_base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server URL.")] = None,
    llm_model: Annotated[str, typer.Option(help="LLM model name.")] = "gpt-4o-mini",
    llm_concepts: Annotated[int, typer.Option(help="Concepts asked per region.")] = 25,
    offline: Annotated[
        bool, typer.Option("--offline", help="Use cached responses only; no network.")
    ] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="Response cache folder.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 30.0,
    similarity: Annotated[float, typer.Option(help="Near-duplicate merge threshold.")] = 0.9,
) -> None:
    """Build the geography-driven concept set (Wikipedia, WorldKG, LLM) into a review file.

    Edit the review CSV's decision column (keep / drop / rename:NEW / recategorise:CAT/SUB),
    rerun to add new candidates as pending (your edits are kept), then --finalize.
    """
    review_path = review or out_dir / "review.csv"
    if finalize:
        df = cs.finalize(review_path, out_dir / "concepts.parquet")
        stdout.print(f"wrote {out_dir / 'concepts.parquet'}: {len(df)} concepts")
        return
    report = cs.build_candidates(
        cs.resolve_regions(region) if region else None, out_dir, review_path=review_path,
        wikipedia=wikipedia, worldkg=worldkg, llm=llm, endpoint=worldkg_endpoint,
        llm_base_url=llm_base_url, llm_model=llm_model,
        wikipedia_api_url=wikipedia_api_url, offline=offline, cache_dir=cache_dir,
        timeout=timeout, llm_concepts=llm_concepts, similarity=similarity,
        progress=note,
    )  # fmt: skip
    _print_build(report)


def _print_build(report: cs.BuildReport) -> None:
    """What a build mined, where it went, and the sources that failed."""
    for failure in report.failures:
        err.print(f"[yellow]warning:[/] {failure}", highlight=False)
    per_source = ", ".join(f"{k} {v}" for k, v in report.rows_per_source.items())
    stdout.print(
        f"{report.concepts} candidate concepts ({per_source}) -> {report.candidates_path}; "
        f"review {report.review_path}: {report.review_rows} rows, {report.review_added} new "
        f"pending; cache {report.cache_hits} hits / {report.cache_misses} fetched",
        highlight=False,
    )


@cli_command
@model_options("clip_model clip_pretrained device", after="template")
def embed_concepts_cmd(
    concepts: Annotated[
        Path | None,
        typer.Argument(help="concepts.parquet from build-concepts --finalize (default: shipped)."),
    ] = None,
    model: Model | None = None,
    out: Annotated[Path, typer.Option(help="Output (.safetensors + .json sidecar).")] = Path(
        "concept_embeddings.safetensors"
    ),
    template: Annotated[
        list[str] | None,
        typer.Option(help="Prompt template with {} (repeatable; default: 4 photo templates)."),
    ] = None,
) -> None:
    """Embed the concept set with CLIP's text encoder (prompt-ensembled, L2-normalised)."""
    templates = tuple(template) if template else models.DEFAULT_TEMPLATES
    emb, computed = models.embed_concept_set(out, concepts, ModelSpec(**(model or {})),
                                             templates, lazy_progress_bar)  # fmt: skip
    verb = "wrote" if computed else "up to date:"
    stdout.print(f"{verb} {out.with_suffix('.safetensors')} ({emb.embeddings.shape[0]} concepts "
                 f"x {emb.embeddings.shape[1]})", soft_wrap=True)  # fmt: skip


COMMANDS: Commands = {"build-concepts": build_concepts_cmd, "embed-concepts": embed_concepts_cmd}
