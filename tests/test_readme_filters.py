"""The README's table of filter rules and defaults is generated from the stages' Params models; this
fails when a parameter, a default or a description changed and the table was not regenerated."""
from __future__ import annotations

from filters import defaults_table
from tests.conftest import REPO


def test_readme_filter_table_is_current():
    readme = (REPO / "README.md").read_text()
    assert defaults_table.section(readme) == defaults_table.table(), (
        "README.md's filter table is stale: run `python -m filters.defaults_table --write`")


def test_every_filter_and_parameter_is_listed():
    table = defaults_table.table()
    kinds = defaults_table.filter_kinds()
    assert {"length_filter", "langid", "gopher_quality", "gopher_repetition", "c4", "fineweb_quality", "exact_dedup",
            "line_dedup", "minhash_dedup", "decontaminate", "pii"} <= set(kinds)
    from engines.stage import stage_class
    for kind in kinds:
        assert f"`{kind}`" in table
        for name, field in stage_class(kind).Params.model_fields.items():
            assert f"`{name}` | `" in table and field.description, (kind, name)
    assert "| `c4` | `split_paragraph` | `true` |" in table
    assert "`min_doc_words` | `50` | Fewer non-symbol words" in table
