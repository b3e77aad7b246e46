"""Box sets: unions of axis-aligned boxes over uint8 codes, and their SQL compilation.

A box is a mapping ``{dim: (lo, hi)}`` with inclusive integer bounds in 0..255. Dims that a box
does not mention are unconstrained. A row is inside a box when every constrained dim lies within
its bounds. Each box belongs to an ensemble *member*; a row's votes are the number of distinct
members with at least one box containing it.

The SQL text produced here is the contract of the whole engine: run by plain DuckDB on the
catalog file, it returns exactly the ids and votes that ``Catalog.select`` returns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InvalidBoxes

N_DIMS = 32
CODE_COLUMNS = tuple(f"f{d:02d}" for d in range(N_DIMS))
_DIM_NAME = re.compile(r"^f([0-9]{2})\Z")
_DIM_INT = re.compile(r"^-?[0-9]{1,9}$")


def column(dim: int) -> str:
    """Name of the code column for ``dim`` (``f00`` .. ``f31``)."""
    return CODE_COLUMNS[dim]


def _parse_dim(key: Any, n_dims: int) -> int:
    if isinstance(key, bool):
        raise InvalidBoxes(f"dim {key!r} is not an integer")
    if isinstance(key, (int, np.integer)):
        dim = int(key)
    elif isinstance(key, str):
        m = _DIM_NAME.match(key)
        if m:
            dim = int(m.group(1))
        elif _DIM_INT.match(key.strip()):
            dim = int(key.strip())
        else:
            raise InvalidBoxes(f"dim {key!r} is neither an integer nor a column name like 'f07'")
    else:
        raise InvalidBoxes(f"dim {key!r} is not an integer")
    if not 0 <= dim < n_dims:
        raise InvalidBoxes(f"dim {dim} is out of range: dims are 0..{n_dims - 1}")
    return dim


def _parse_bound(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise InvalidBoxes(f"{what} bound {value!r} is not an integer")
    value = int(value)
    if not 0 <= value <= 255:
        raise InvalidBoxes(f"{what} bound {value} is outside the code range 0..255")
    return value


class BoxSet:
    """A union of boxes over ``n_dims`` uint8 dims, each box owned by an ensemble member.

    Parameters
    ----------
    boxes : iterable of mappings ``{dim: (lo, hi)}``
        ``dim`` is an int, a digit string or a column name like ``"f07"``; bounds are
        inclusive integers in 0..255 with ``lo <= hi``.
    members : sequence of int, optional
        ``members[i]`` is the ensemble member of box ``i``; default: all boxes in member 0.

    Attributes
    ----------
    lo, hi : ndarray of uint8, shape (n_boxes, n_dims)
        Bounds per box; unconstrained dims hold 0 and 255.
    members : ndarray of int64, shape (n_boxes,)
    """

    __slots__ = ("lo", "hi", "members", "n_dims")

    def __init__(
        self,
        boxes: Iterable[Mapping[Any, Sequence[int]]],
        members: Sequence[int] | None = None,
        *,
        n_dims: int = N_DIMS,
    ):
        if isinstance(boxes, (str, bytes, Mapping)):
            raise InvalidBoxes("boxes must be a list of {dim: [lo, hi]} mappings")
        try:
            boxes = list(boxes)
        except TypeError:
            raise InvalidBoxes("boxes must be a list of {dim: [lo, hi]} mappings") from None
        lo = np.zeros((len(boxes), n_dims), dtype=np.uint8)
        hi = np.full((len(boxes), n_dims), 255, dtype=np.uint8)
        for i, box in enumerate(boxes):
            if not isinstance(box, Mapping):
                raise InvalidBoxes(f"box {i} is {type(box).__name__}, expected a mapping {{dim: [lo, hi]}}")
            for key, bounds in box.items():
                dim = _parse_dim(key, n_dims)
                if (
                    isinstance(bounds, (str, bytes, Mapping))
                    or not isinstance(bounds, Sequence | np.ndarray)
                    or (isinstance(bounds, np.ndarray) and bounds.ndim != 1)
                ):
                    raise InvalidBoxes(f"box {i}, dim {dim}: bounds must be a pair [lo, hi], got {bounds!r}")
                if len(bounds) != 2:
                    raise InvalidBoxes(f"box {i}, dim {dim}: bounds must be a pair [lo, hi], got {bounds!r}")
                b_lo = _parse_bound(bounds[0], f"box {i}, dim {dim}: lower")
                b_hi = _parse_bound(bounds[1], f"box {i}, dim {dim}: upper")
                if b_lo > b_hi:
                    raise InvalidBoxes(
                        f"box {i}, dim {dim}: lo {b_lo} > hi {b_hi}; an empty range is not a box"
                    )
                # Two keys naming one dim ("3" and "f03") intersect, like SQL's AND would.
                lo[i, dim] = max(lo[i, dim], b_lo)
                hi[i, dim] = min(hi[i, dim], b_hi)
                if lo[i, dim] > hi[i, dim]:
                    raise InvalidBoxes(f"box {i}, dim {dim}: the bounds given for this dim do not overlap")
        self.lo, self.hi, self.n_dims = lo, hi, n_dims
        self.members = _parse_members(members, len(boxes))

    @classmethod
    def from_arrays(cls, lo: np.ndarray, hi: np.ndarray, members: Sequence[int] | None = None) -> BoxSet:
        """Build from bound arrays of shape (n_boxes, n_dims) without per-box Python loops."""
        lo_a, hi_a = np.asarray(lo), np.asarray(hi)
        if lo_a.ndim != 2 or lo_a.shape != hi_a.shape:
            raise InvalidBoxes(
                f"lo and hi must be 2-d arrays of one shape, got {lo_a.shape} and {hi_a.shape}"
            )
        for name, arr in (("lo", lo_a), ("hi", hi_a)):
            if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255):
                raise InvalidBoxes(f"{name} must hold integers in 0..255")
        if np.any(lo_a > hi_a):
            i, d = np.argwhere(lo_a > hi_a)[0]
            raise InvalidBoxes(f"box {i}, dim {d}: lo {lo_a[i, d]} > hi {hi_a[i, d]}")
        self = cls.__new__(cls)
        self.lo = np.ascontiguousarray(lo_a, dtype=np.uint8)
        self.hi = np.ascontiguousarray(hi_a, dtype=np.uint8)
        self.n_dims = lo_a.shape[1]
        self.members = _parse_members(members, lo_a.shape[0])
        return self

    # -- JSON -------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: str | bytes | Mapping | Sequence, *, n_dims: int = N_DIMS) -> BoxSet:
        """Parse ``{"boxes": [{"3": [10, 40]}, ...], "members": [...]}`` or a bare list of boxes."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InvalidBoxes(f"box file is not valid JSON: {e}") from None
            except RecursionError:
                raise InvalidBoxes("box JSON is nested too deeply") from None
            except ValueError as e:  # e.g. an integer of more than 4300 digits
                raise InvalidBoxes(f"box JSON holds a value that cannot be read: {e}") from None
        if isinstance(data, Mapping):
            unknown = set(data) - {"boxes", "members"}
            if unknown:
                raise InvalidBoxes(
                    f"unknown key(s) in box JSON: {sorted(map(repr, unknown))}; "
                    "expected 'boxes' and 'members'"
                )
            if "boxes" not in data:
                raise InvalidBoxes("box JSON has no 'boxes' list")
            return cls(data["boxes"], data.get("members"), n_dims=n_dims)
        if isinstance(data, list):
            return cls(data, n_dims=n_dims)
        raise InvalidBoxes("box JSON must be an object with a 'boxes' list, or a list of boxes")

    def to_json(self) -> dict:
        return {"boxes": [self.box(i) for i in range(len(self))], "members": self.members.tolist()}

    # -- inspection -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.lo.shape[0]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BoxSet)
            and np.array_equal(self.lo, other.lo)
            and np.array_equal(self.hi, other.hi)
            and np.array_equal(self.members, other.members)
        )

    def __repr__(self) -> str:
        return f"BoxSet({len(self)} boxes, {self.n_members} members)"

    @property
    def n_members(self) -> int:
        """Number of distinct members; the largest possible vote count."""
        return int(np.unique(self.members).size)

    def constrained(self, i: int) -> list[int]:
        """Dims that box ``i`` constrains (bounds narrower than 0..255)."""
        return np.flatnonzero((self.lo[i] > 0) | (self.hi[i] < 255)).tolist()

    def box(self, i: int) -> dict[int, tuple[int, int]]:
        return {d: (int(self.lo[i, d]), int(self.hi[i, d])) for d in self.constrained(i)}

    # -- SQL --------------------------------------------------------------------------------
    def box_predicate(self, i: int) -> str:
        """SQL predicate for box ``i``: one BETWEEN per constrained dim, ``TRUE`` if none."""
        parts = [
            f"{column(d)} BETWEEN {int(self.lo[i, d])} AND {int(self.hi[i, d])}" for d in self.constrained(i)
        ]
        return "(" + " AND ".join(parts) + ")" if parts else "TRUE"

    def predicate(self, member: int | None = None) -> str:
        """OR of the box predicates (of one member, or of all boxes); ``FALSE`` if there are none."""
        idx = range(len(self)) if member is None else np.flatnonzero(self.members == member)
        preds = [self.box_predicate(i) for i in idx]
        if not preds:
            return "FALSE"
        if "TRUE" in preds:
            return "TRUE"
        return " OR ".join(preds)

    def to_sql(
        self, source: str = "codes", *, min_votes: int = 1, center: Sequence[int] | None = None
    ) -> str:
        """A complete SELECT returning ``(id, votes)`` ranked by votes, then block position.

        With ``center`` (an integer code, one value per dim), rows of equal votes are ranked by
        their squared distance to it before block position.

        ``source`` is a table name or any relation expression, e.g.
        ``read_parquet('export/codes.parquet')``. Only integers from this box set enter the
        text; ``source`` is the caller's.
        """
        min_votes = max(1, int(min_votes))
        order = "pos" if center is None else "dist, pos"
        dist = "" if center is None else f",\n    {distance_sql(center, self.n_dims)} AS dist"
        uniq = np.unique(self.members)
        if len(uniq) <= 1:
            if min_votes > 1:
                return f"SELECT id, 1 AS votes FROM {source} WHERE FALSE"
            if center is None:
                return f"SELECT id, 1 AS votes FROM {source}\nWHERE {self.predicate()}\nORDER BY pos"
            return (
                f"SELECT id, 1 AS votes FROM {source}\nWHERE {self.predicate()}\n"
                f"ORDER BY {distance_sql(center, self.n_dims)}, pos"
            )
        # A sum of per-member 0/1 terms counts each member once, however many of its boxes
        # hold the row. Plain "+" keeps the text portable to engines without list functions.
        terms = "\n    + ".join(f"CAST(({self.predicate(int(m))}) AS INTEGER)" for m in uniq)
        return (
            f"SELECT id, votes FROM (\n  SELECT id, pos,\n    {terms}\n  AS votes{dist}\n  FROM {source}\n) AS voted\n"
            f"WHERE votes >= {min_votes}\nORDER BY votes DESC, {order}"
        )


def distance_sql(center: Sequence[int], n_dims: int = N_DIMS) -> str:
    """SQL for the squared L2 distance of a row's code to the integer code ``center``; exact
    integer arithmetic, so every engine ranks ties identically."""
    c = [int(v) for v in center]
    if len(c) != n_dims or any(not 0 <= v <= 255 for v in c):
        raise InvalidBoxes(f"center must be {n_dims} integers in 0..255")
    terms = (
        f"(CAST({column(d)} AS INTEGER) - {v}) * (CAST({column(d)} AS INTEGER) - {v})"
        for d, v in enumerate(c)
    )
    return "(" + " + ".join(terms) + ")"


def _parse_members(members: Sequence[int] | None, n_boxes: int) -> np.ndarray:
    if members is None:
        return np.zeros(n_boxes, dtype=np.int64)
    if isinstance(members, (str, bytes, Mapping)):
        raise InvalidBoxes("members must be a list of integers, one per box")
    try:
        members = list(members)
    except TypeError:
        raise InvalidBoxes("members must be a list of integers, one per box") from None
    if len(members) != n_boxes:
        raise InvalidBoxes(f"members has {len(members)} entries for {n_boxes} boxes; give one per box")
    for m in members:
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
            raise InvalidBoxes(f"member {m!r} is not an integer")
        if not -(2**63) <= int(m) < 2**63:
            raise InvalidBoxes(f"member {m} does not fit in a 64-bit integer")
    return np.asarray(members, dtype=np.int64).reshape(n_boxes)
