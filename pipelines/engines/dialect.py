"""Run the DuckDB-dialect SQL on Spark: sqlglot transpiles it; this module fills sqlglot's gaps.

The SQL of joinedup is written once, in DuckDB's dialect (Splink's own approach). sqlglot
translates nearly all of it; the few functions it passes through unchanged are rewritten
here, so that nothing is written twice by hand.
"""

from __future__ import annotations

import re
from functools import lru_cache

import sqlglot
from sqlglot import exp

# strftime/strptime directives -> Java DateTimeFormatter letters (as Spark parses them).
_STRPTIME_TO_JAVA = {
    "%Y": "yyyy",
    "%y": "yy",
    "%m": "MM",
    "%-m": "M",
    "%d": "dd",
    "%-d": "d",
    "%b": "MMM",
    "%B": "MMMM",
    "%H": "HH",
    "%M": "mm",
    "%S": "ss",
    "%%": "%",
}


class DialectError(ValueError):
    """SQL that cannot be run on Spark as written (names the construct)."""


def java_date_pattern(strptime_format: str) -> str:
    """'%d/%m/%Y' -> 'dd/MM/yyyy'; literal text is quoted as Java patterns require."""
    out: list[str] = []
    for token in re.findall(r"%-?[A-Za-z%]|[^%]+", strptime_format):
        if token.startswith("%"):
            if token not in _STRPTIME_TO_JAVA:
                raise DialectError(
                    f"date format directive {token!r} (in {strptime_format!r}) has no Spark "
                    f"equivalent; supported: {sorted(_STRPTIME_TO_JAVA)}"
                )
            out.append(_STRPTIME_TO_JAVA[token])
        else:
            letters = re.sub(r"([A-Za-z]+)", r"'\1'", token.replace("'", "''"))
            out.append(letters)
    return "".join(out)


def _rewrite(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Anonymous) and node.name.lower() == "try_strptime":
        text, fmt = node.expressions
        if not isinstance(fmt, exp.Literal) or not fmt.is_string:
            raise DialectError("try_strptime needs a literal format to run on Spark")
        return exp.Anonymous(
            this="try_to_timestamp",
            expressions=[text, exp.Literal.string(java_date_pattern(fmt.this))],
        )
    return node


@lru_cache(maxsize=4096)
def duckdb_to_spark(sql: str) -> str:
    """One DuckDB-dialect statement as Spark SQL."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    return tree.transform(_rewrite).sql(dialect="spark")


def to_duckdb(sql: str, dialect: str) -> str:
    """An expression written in another engine's dialect (a Spark-trained model's blocking
    rules quote with backticks) as DuckDB's, the dialect all SQL handed to an engine is in."""
    return sqlglot.transpile(sql, read=dialect, write="duckdb")[0] if dialect != "duckdb" else sql
