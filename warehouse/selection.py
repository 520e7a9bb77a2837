"""The release selection: a small boolean language over annotation and document columns.

Grammar (parsed with Python's ``ast`` module, never evaluated)::

    expr   := expr and expr | expr or expr | not expr | (expr) | comparison | operand
    comparison := operand (== | != | < | <= | > | >=) operand
               | operand in [literal, ...] | operand not in [literal, ...]
               | operand is None | operand is not None
    operand := stage.column | document column (source, lang, domain, url, license)
             | number | 'string' | true | false | null

Examples: ``length.keep``, ``length.keep and quality.score >= 0.5``,
``source in ['wiki_en', 'docs'] or gopher.keep``. Unknown names are errors that list what exists.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

import polars as pl

DOCUMENT_COLUMNS = ("source", "lang", "domain", "url", "license", "id")
_LITERALS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
_CMP = {ast.Eq: "eq", ast.NotEq: "ne", ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge"}


class SelectionError(ValueError):
    pass


@dataclass
class Selection:
    text: str
    expr: pl.Expr
    stages: set[str]  # stage names referenced
    columns: set[str]  # "stage.column" names referenced


def parse_selection(text: str, available: dict[str, set[str]]) -> Selection:
    """Parse ``text`` into a Polars expression. ``available`` maps stage name -> its columns."""
    try:
        tree = ast.parse(text.strip() or "true", mode="eval")
    except SyntaxError as e:
        raise SelectionError(f"release.select: cannot parse {text!r}: {e.msg} at column {e.offset}") from None
    used: set[str] = set()

    def fail(node: ast.AST, why: str) -> SelectionError:
        return SelectionError(f"release.select: {why} (in {ast.get_source_segment(text, node) or text!r})")

    def operand(node: ast.AST) -> pl.Expr:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)) or (
            isinstance(node, ast.Constant) and node.value is None
        ):
            return pl.lit(node.value)
        if isinstance(node, ast.Name):
            if node.id in _LITERALS:
                return pl.lit(_LITERALS[node.id])
            if node.id in DOCUMENT_COLUMNS:
                return pl.col(node.id)
            raise fail(node, f"unknown name {node.id!r}; use stage.column (stages: {sorted(available)}) "
                             f"or a document column {list(DOCUMENT_COLUMNS)}")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            stage, col = node.value.id, node.attr
            if stage not in available:
                raise fail(node, f"no stage named {stage!r}; stages in this pipeline: {sorted(available)}")
            if col not in available[stage]:
                raise fail(node, f"stage {stage!r} has no column {col!r}; it writes {sorted(available[stage])}")
            used.add(f"{stage}.{col}")
            return pl.col(f"{stage}.{col}")
        if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)
                and isinstance(node.operand.value, (int, float))):
            return pl.lit(-node.operand.value)
        raise fail(node, f"not allowed here: {type(node).__name__}")

    def literal_list(node: ast.AST) -> list:
        if not isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            raise fail(node, "'in' needs a list of literals, e.g. ['a', 'b']")
        vals = []
        for elt in node.elts:
            if not isinstance(elt, ast.Constant):
                raise fail(elt, "'in' lists hold literals only")
            vals.append(elt.value)
        return vals

    def boolean(node: ast.AST) -> pl.Expr:
        if isinstance(node, ast.BoolOp):
            parts = [boolean(v) for v in node.values]
            joined = parts[0]
            for p in parts[1:]:
                joined = (joined & p) if isinstance(node.op, ast.And) else (joined | p)
            return joined
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ~boolean(node.operand)
        if isinstance(node, ast.Compare):
            left: ast.expr = node.left
            out: pl.Expr | None = None
            for op, right in zip(node.ops, node.comparators):
                if isinstance(op, (ast.In, ast.NotIn)):
                    e = operand(left).is_in(literal_list(right))
                    e = ~e if isinstance(op, ast.NotIn) else e
                elif isinstance(op, (ast.Is, ast.IsNot)):
                    if not (isinstance(right, ast.Constant) and right.value is None) and not (
                        isinstance(right, ast.Name) and right.id in ("None", "null")
                    ):
                        raise fail(node, "'is' compares with None/null only")
                    e = operand(left).is_null() if isinstance(op, ast.Is) else operand(left).is_not_null()
                elif type(op) in _CMP:
                    e = getattr(operand(left), _CMP[type(op)])(operand(right))
                else:
                    raise fail(node, f"operator {type(op).__name__} not allowed")
                out = e if out is None else out & e
                left = right
            assert out is not None
            return out
        return operand(node)

    expr = boolean(tree.body)
    return Selection(text=text, expr=expr.fill_null(False), stages={c.split(".")[0] for c in used}, columns=used)
