"""SQL written once for both backends.

Statements are written with ``?`` for each parameter and ``{t}`` before each table name; a
``Dialect`` turns them into what one store takes: on SQLite ``{t}`` goes and ``?`` stays; on
PostgreSQL ``{t}`` becomes the store's schema and ``?`` becomes psycopg's ``%s`` (so a literal
``%`` is doubled). ``?`` is therefore always a parameter: PostgreSQL's JSON ``?`` operators cannot
be written this way (none is used).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dialect:
    postgres: bool
    schema: str = "public"

    def __call__(self, sql: str) -> str:
        """The statement as this store takes it."""
        if not self.postgres:
            return sql.replace("{t}", "")
        return sql.replace("%", "%%").replace("{t}", f'"{self.schema}".').replace("?", "%s")

    @staticmethod
    def marks(count: int) -> str:
        """``?, ?, ...``: one parameter each, for ``IN (...)`` lists."""
        return ", ".join("?" * count)


SQLITE = Dialect(postgres=False)
