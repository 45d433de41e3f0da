"""How the notebooks show a table: a missing value (no success yet: no latency, no cost per win) as "—", as
the console's tables show it, where pandas wrote "NaN". Display only: the DataFrame keeps its NaN, for the
sums and comparisons an analyst makes next."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

#: A missing value as shown, in the notebooks' tables and the console's (``console_stats`` uses this one).
MISSING = "—"


class Table:
    """A DataFrame as a notebook cell's result shows it, with :data:`MISSING` for missing values; numbers are
    formatted as pandas' display options say (``display.float_format``)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def _repr_html_(self) -> str:
        return str(self._nan().to_html(na_rep=MISSING, notebook=True))

    def __repr__(self) -> str:
        return str(self._nan().to_string(na_rep=MISSING))

    def _nan(self) -> pd.DataFrame:
        """Every missing value as NaN: pandas writes ``na_rep`` for NaN but "None" for a None in an object
        column (a replay's cost per image when no race brought an image)."""
        return self.frame.where(self.frame.notna(), float("nan"))


def table(frame: pd.DataFrame) -> Table:
    """``frame`` shown with "—" for missing values (the last expression of a notebook cell)."""
    return Table(frame)
