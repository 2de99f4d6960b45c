"""Reads routing datasets in RouterBench's wide layout: one row per prompt, every model's outcome.

Columns: ``prompt``, optional ``sample_id`` and ``eval_name``, and per model a quality column named
after the model, ``<model>|total_cost`` (USD) and optionally ``<model>|latency_ms``.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COST_SUFFIX = "|total_cost"
LATENCY_SUFFIX = "|latency_ms"

# Prompts can be long (few-shot contexts); the csv module's default field cap is 128 KiB.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class DatasetError(ValueError):
    """The file is not a usable routing dataset; the message says what is wrong and where."""


@dataclass(frozen=True)
class RoutingDataset:
    """Every model's outcome on every prompt; arrays are ``(rows, models)``."""

    models: tuple[str, ...]
    sample_ids: tuple[str, ...]
    eval_names: tuple[str, ...]
    prompts: tuple[str, ...]
    quality: np.ndarray
    cost: np.ndarray
    latency_ms: np.ndarray | None

    @property
    def rows(self) -> int:
        return len(self.prompts)

    def subset(self, order: np.ndarray) -> RoutingDataset:
        """The rows at ``order``, in that order."""
        pick = [int(i) for i in order]
        return RoutingDataset(
            models=self.models,
            sample_ids=tuple(self.sample_ids[i] for i in pick),
            eval_names=tuple(self.eval_names[i] for i in pick),
            prompts=tuple(self.prompts[i] for i in pick),
            quality=self.quality[order],
            cost=self.cost[order],
            latency_ms=None if self.latency_ms is None else self.latency_ms[order],
        )


def model_columns(header: list[str]) -> tuple[str, ...]:
    """Models that have both a quality column and a ``|total_cost`` column, in header order."""
    columns = set(header)
    return tuple(
        name
        for name in header
        if COST_SUFFIX not in name and LATENCY_SUFFIX not in name and name + COST_SUFFIX in columns
    )


def _number(text: str, row: int, column: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DatasetError(f"row {row}: {what} in column {column!r} is not a number: {text!r}") from None
    if not np.isfinite(value):
        raise DatasetError(f"row {row}: {what} in column {column!r} is not finite: {text!r}")
    return value


def load_routing_csv(path: str | Path) -> RoutingDataset:
    """Read and validate a wide-layout routing CSV.

    Raises `DatasetError` for a missing file, no ``prompt`` column, no model columns, a
    non-numeric or out-of-range value, or no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no such file: {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        if "prompt" not in header:
            raise DatasetError(f"{path}: no 'prompt' column (header: {header[:8]})")
        models = model_columns(header)
        if not models:
            raise DatasetError(
                f"{path}: no model columns; each model needs a quality column <model> "
                f"and a cost column <model>{COST_SUFFIX}"
            )
        has_latency = all(m + LATENCY_SUFFIX in header for m in models)
        sample_ids: list[str] = []
        eval_names: list[str] = []
        prompts: list[str] = []
        quality: list[list[float]] = []
        cost: list[list[float]] = []
        latency: list[list[float]] = []
        for line, record in enumerate(reader, start=2):
            q = [_number(record[m], line, m, "quality") for m in models]
            c = [_number(record[m + COST_SUFFIX], line, m + COST_SUFFIX, "cost") for m in models]
            for model, value in zip(models, q, strict=True):
                if not 0.0 <= value <= 1.0:
                    raise DatasetError(f"row {line}: quality of {model!r} must be in [0, 1], got {value}")
            for model, value in zip(models, c, strict=True):
                if value < 0:
                    raise DatasetError(f"row {line}: cost of {model!r} must be >= 0, got {value}")
            if has_latency:
                latency.append(
                    [_number(record[m + LATENCY_SUFFIX], line, m + LATENCY_SUFFIX, "latency") for m in models]
                )
            sample_ids.append(record.get("sample_id") or str(line - 2))
            eval_names.append(record.get("eval_name") or "all")
            prompts.append(record["prompt"] or "")
            quality.append(q)
            cost.append(c)
    if not prompts:
        raise DatasetError(f"{path}: no data rows")
    return RoutingDataset(
        models=models,
        sample_ids=tuple(sample_ids),
        eval_names=tuple(eval_names),
        prompts=tuple(prompts),
        quality=np.array(quality),
        cost=np.array(cost),
        latency_ms=np.array(latency) if has_latency else None,
    )
