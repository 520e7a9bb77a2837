"""``line_dedup``: remove boilerplate lines (menus, footers, banners) repeated across a site's pages.

A global stage (incremental, see below). Documents are grouped by ``domain`` (by ``source`` when the domain is null). **Fit**
streams the corpus once and counts, for each (group, normalised line), the number of documents that
contain the line; lines found in at least ``min_docs=3`` documents of their group are boilerplate
and go to the artifact (with their document count and the first document that had them). **Apply**
drops those lines from each document and writes ``text_clean``.

Lines are the text split on ``"\\n"``; a line is normalised by stripping it, collapsing runs of
whitespace to one space and lower-casing (``lowercase=true``); blank lines are never boilerplate and
are kept. ``text_clean`` is the remaining lines joined by ``"\\n"``, verbatim, and null when nothing
was removed (the text is unchanged: stored once, see engines/derived_text.py). ``lines_removed``
counts the dropped lines, ``chars_removed`` is ``len(text) - len(text_clean)`` in characters (the
lines plus their newlines). ``keep`` is false, reason ``all_lines_boilerplate``, when the text had non-blank content and none is
left; otherwise true (an empty text is kept: emptiness is other filters' business).

Why these defaults. Line- or paragraph-level exact dedup is an old tool: C4 drops every repeated
three-sentence span but one, CCNet and Dolma drop paragraphs already seen elsewhere (a threshold of
two, the first copy kept). This stage targets *template* text, so it counts per site and asks for
three documents (two pages sharing a line are as often a quotation as a template; three pages of one
site sharing it are a pattern). It keeps the first copy (``keep_first=true``), like those tools:
the first document in lake order (sources in pipeline order, then ingest run, shard and row: the
order the fit reads) keeps its copies of the line and every later document loses them. Removing all
copies (``keep_first=false``) strips menus completely, but it also deletes content that a site
repeats verbatim, everywhere: the handbook in the test corpora serves untranslated English
paragraphs identically under several languages, and section titles recur in tables of contents,
so every copy of those would be lost. One surviving copy of a menu costs little; losing the only
text of a paragraph does not come back. Raise ``min_docs`` for sources whose documents legitimately
share lines (code with ``}`` or ``return None`` on every page).

Night after night (``fit_policy = "incremental"``): the artifact keeps the whole line index
(every distinct (site, line) with its document count and first document), and a run adds only the
new shards' lines to it. A new page gets exactly what a full fit over all shards gives it. Earlier
pages keep the ``text_clean`` they were given: a line that becomes boilerplate only because new
pages repeat it is removed from the new pages (and from later ones), not from the earlier pages
that had it while it was still below ``min_docs`` (a full fit would remove it from the 2nd and
later of them too). So released text never changes under a published document; ``curate run
--refit NAME`` cleans everything again with what the whole corpus shows now.

Cost: the fit keeps, per distinct (site, line) of the corpus, a 64-bit hash (Polars'; the index
records the Polars version and a new version refits), a document count and the id of its first
document: about 100 bytes each in memory, so 10 GB per 100 M distinct lines; batch aggregates are
merged as they come. The index is stored zstd-compressed (about 40 bytes per distinct line: the
first document's id dominates). Apply explodes each batch into lines and joins them with the boilerplate table (a hash join
on strings): about 80 MB/s on one core over the handbook pages.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from engines.derived_text import store_once
from engines.stage import EarlierRows, GlobalStage, StageContext, register_stage
from filters.whitespace import collapse_whitespace

INDEX_FILE = "line_index.parquet"  # every distinct (site, line): count, first document, text once boilerplate
STATE_FILE = "state.json"  # documents counted so far
INDEX_SCHEMA = {"group": pl.String, "h": pl.UInt64, "n": pl.Int64, "first_seq": pl.Int64, "first_id": pl.String,
                "norm": pl.String}


class LineDedupParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    min_docs: int = Field(default=3, ge=2)
    """A line in at least this many documents of one site (domain, else source) is boilerplate and
    removed from ``text_clean``; a document left empty is dropped (``all_lines_boilerplate``)."""
    keep_first: bool = True
    """The first document in lake order keeps its copy of each boilerplate line."""
    lowercase: bool = True
    """Compare lines lower-cased (always stripped, whitespace collapsed)."""


def _group() -> pl.Expr:
    """The site of a document: its domain, else its source (prefixed so the two never collide)."""
    return pl.when(pl.col("domain").is_not_null()).then(pl.lit("d:") + pl.col("domain")) \
        .otherwise(pl.lit("s:") + pl.col("source").fill_null(""))


def _lines(batch: pl.DataFrame, lowercase: bool) -> pl.DataFrame:
    """One row per line: ``doc`` (row in batch), ``id``, ``group``, ``line`` (verbatim), ``norm``."""
    norm = collapse_whitespace(pl.col("line").str.strip_chars())
    if lowercase:
        norm = norm.str.to_lowercase()
    return (batch.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("doc"), "id", _group().alias("group"),
                         pl.col("text").fill_null("").str.split("\n").alias("line"))
            .explode("line")
            .with_columns(norm.alias("norm")))


@register_stage
class LineDedup(GlobalStage):
    kind = "line_dedup"
    version = "2"  # 2: text_clean is null where nothing was removed
    fit_policy = "incremental"
    needs = ("text", "domain", "source")
    Params = LineDedupParams
    text_columns = ("text_clean",)

    def writes(self) -> dict[str, pa.DataType]:
        return {"text_clean": pa.large_string(), "lines_removed": pa.int64(), "chars_removed": pa.int64(),
                "keep": pa.bool_(), "reason": pa.string()}

    # --- fit --------------------------------------------------------------------------------------
    def fit_inputs(self) -> dict[str, Any]:
        # The index stores Polars' line hashes, which may change between Polars versions.
        return {"line_hash": f"polars {pl.__version__}"}

    def fit(self, batches: Iterator[pl.DataFrame], artifact_dir: str) -> dict[str, Any]:
        return self._update(None, batches, artifact_dir)

    def fit_incremental(self, previous_dir: str, batches: Iterator[pl.DataFrame], artifact_dir: str,
                        earlier: EarlierRows) -> dict[str, Any]:
        return self._update(previous_dir, batches, artifact_dir)

    def _update(self, previous_dir: str | None, batches: Iterator[pl.DataFrame], artifact_dir: str) -> dict[str, Any]:
        """Count lines per site over ``batches`` on top of the earlier index (every distinct
        line with its document count and first document; its text once it is boilerplate)."""
        p: LineDedupParams = self.params  # type: ignore[assignment]
        if previous_dir:
            running = pl.read_parquet(f"{previous_dir}/{INDEX_FILE}")
            seq = int(json.loads(Path(previous_dir, STATE_FILE).read_text())["documents"])
        else:
            running, seq = pl.DataFrame(schema=INDEX_SCHEMA), 0
        first_seq, new_docs = seq, 0
        pending: list[pl.DataFrame] = []
        pending_rows = 0

        def merge(frames: list[pl.DataFrame]) -> pl.DataFrame:
            merged = (pl.concat(frames).sort("first_seq")
                      .group_by("group", "h", maintain_order=True)
                      .agg(pl.col("n").sum(), pl.col("first_seq").first(), pl.col("first_id").first(),
                           pl.col("norm").drop_nulls().first()))
            # Only lines that are boilerplate so far keep their text: a line that crosses the
            # threshold later is in the batch that makes it cross, which brings its text along.
            return merged.with_columns(
                pl.when(pl.col("n") >= p.min_docs).then(pl.col("norm")).otherwise(pl.lit(None, pl.String)))

        for batch in batches:
            lines = _lines(batch, p.lowercase).filter(pl.col("norm") != "")
            agg = (lines.with_columns((pl.col("doc") + seq).alias("seq"), pl.col("norm").hash(seed=7).alias("h"))
                   .unique(["doc", "group", "h"], keep="first", maintain_order=True)
                   .group_by("group", "h", maintain_order=True)
                   .agg(pl.len().cast(pl.Int64).alias("n"), pl.col("seq").first().alias("first_seq"),
                        pl.col("id").first().alias("first_id"), pl.col("norm").first()))
            pending.append(agg.select(list(INDEX_SCHEMA)))
            pending_rows += agg.height
            seq += batch.height
            new_docs += batch.height
            if pending_rows > max(1_000_000, running.height):
                running = merge([running, *pending])
                pending, pending_rows = [], 0
        running = merge([running, *pending])
        pq.write_table(running.to_arrow(), f"{artifact_dir}/{INDEX_FILE}", compression="zstd")
        Path(artifact_dir, STATE_FILE).write_text(json.dumps({"documents": seq}))
        boiler = running.filter(pl.col("n") >= p.min_docs).select("group", "norm", "n", "first_id")
        pq.write_table(boiler.to_arrow(), f"{artifact_dir}/boilerplate_lines.parquet")
        return {"documents": seq, "new_documents": new_docs, "first_position": first_seq,
                "distinct_lines": running.height, "boilerplate_lines": boiler.height,
                "groups": boiler.get_column("group").n_unique()}

    # --- apply ------------------------------------------------------------------------------------
    def setup(self, ctx: StageContext) -> None:
        assert ctx.artifact_dir, "line_dedup needs its fitted artifact"
        table = pl.from_arrow(pq.read_table(f"{ctx.artifact_dir}/boilerplate_lines.parquet"))
        assert isinstance(table, pl.DataFrame)
        self._boiler = table.select("group", "norm", "first_id").with_columns(pl.lit(True).alias("_bp"))

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: LineDedupParams = self.params  # type: ignore[assignment]
        lines = _lines(batch, p.lowercase).join(self._boiler, on=["group", "norm"], how="left", maintain_order="left")
        removed = pl.col("_bp").fill_null(False) & (pl.col("norm") != "")
        if p.keep_first:
            removed = removed & (pl.col("id") != pl.col("first_id"))
        per_doc = (lines.with_columns(removed.alias("_rm"))
                   .group_by("doc", maintain_order=True)
                   .agg(pl.col("line").filter(~pl.col("_rm")).str.join("\n").alias("text_clean"),
                        pl.col("_rm").sum().cast(pl.Int64).alias("lines_removed")))
        text = pl.col("text").fill_null("")
        out = batch.select(text.alias("text"), pl.int_range(pl.len(), dtype=pl.Int64).alias("doc")).join(
            per_doc, on="doc", how="left", maintain_order="left")
        emptied = (pl.col("text_clean").str.strip_chars() == "") & (pl.col("text").str.strip_chars() != "")
        return out.select(
            store_once(pl.col("text_clean"), pl.col("text")).alias("text_clean"), "lines_removed",
            (pl.col("text").str.len_chars().cast(pl.Int64) - pl.col("text_clean").str.len_chars().cast(pl.Int64))
            .alias("chars_removed"),
            (~emptied).alias("keep"),
            pl.when(emptied).then(pl.lit("all_lines_boilerplate")).otherwise(pl.lit(None, pl.String)).alias("reason"),
        )
