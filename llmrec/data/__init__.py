"""Interaction data: loaders, filters, chronological splits, and the data stage."""

from llmrec.data.filters import FilterConfig, FilterReport, apply_filters
from llmrec.data.prepare import (
    DataConfig,
    DatasetConfig,
    PreparedData,
    build_data,
    load_dataset,
    prepare_data,
)
from llmrec.data.schema import DataError, Interactions, Source
from llmrec.data.split import Split, SplitConfig, leave_one_out, make_split, temporal_split

__all__ = [
    "DataConfig",
    "DataError",
    "DatasetConfig",
    "FilterConfig",
    "FilterReport",
    "Interactions",
    "PreparedData",
    "Source",
    "Split",
    "SplitConfig",
    "apply_filters",
    "build_data",
    "leave_one_out",
    "load_dataset",
    "make_split",
    "prepare_data",
    "temporal_split",
]
