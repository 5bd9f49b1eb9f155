"""Data layer: image sources by spec or from Python objects, stratified splits, eval transforms and batching.

Nothing here knows about models or metrics; the analysis pass asks a model adapter for its preprocessing (a
:class:`PreprocessConfig` run through timm's own pipeline by :func:`build_transform`, a Hugging Face image
processor (loaded by the ``hf:`` model adapter), or a torchvision weights' transform in a
:class:`CallableTransform`) and walks a source with :func:`iterate_batches`.

The names below load on first use (PEP 562): ``from vitdepth.data import create_source`` works as before, and
importing the package alone loads neither torch nor the image libraries (``vitdepth models`` lists the sources
from :mod:`vitdepth.specs` without them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# name -> submodule that defines it; loaded by __getattr__ on first use
_LAZY = {
    "HFDatasetSource": "hfdataset",
    "Batch": "loader",
    "iterate_batches": "loader",
    "prepare_item": "loader",
    "TorchDatasetSource": "objects",
    "source_from_object": "objects",
    "UNLABELLED": "sources",
    "DataSource": "sources",
    "DigitsSource": "sources",
    "FolderSource": "sources",
    "ImageLoadError": "sources",
    "SyntheticSource": "sources",
    "create_source": "sources",
    "list_sources": "sources",
    "SPLITS": "splits",
    "check_labels": "splits",
    "split_coverage": "splits",
    "stratified_splits": "splits",
    "stratified_subset": "splits",
    "CSVSource": "tabular",
    "CallableTransform": "transforms",
    "HFImageProcessorTransform": "transforms",
    "ImageTransform": "transforms",
    "PreprocessConfig": "transforms",
    "apply_preprocess_overrides": "transforms",
    "build_transform": "transforms",
    "to_rgb": "transforms",
    "WebDatasetSource": "wds",
}

if TYPE_CHECKING:  # the eager imports, for type checkers and IDEs
    from .hfdataset import HFDatasetSource as HFDatasetSource
    from .loader import Batch as Batch
    from .loader import iterate_batches as iterate_batches
    from .loader import prepare_item as prepare_item
    from .objects import TorchDatasetSource as TorchDatasetSource
    from .objects import source_from_object as source_from_object
    from .sources import UNLABELLED as UNLABELLED
    from .sources import DataSource as DataSource
    from .sources import DigitsSource as DigitsSource
    from .sources import FolderSource as FolderSource
    from .sources import ImageLoadError as ImageLoadError
    from .sources import SyntheticSource as SyntheticSource
    from .sources import create_source as create_source
    from .sources import list_sources as list_sources
    from .splits import SPLITS as SPLITS
    from .splits import check_labels as check_labels
    from .splits import split_coverage as split_coverage
    from .splits import stratified_splits as stratified_splits
    from .splits import stratified_subset as stratified_subset
    from .tabular import CSVSource as CSVSource
    from .transforms import CallableTransform as CallableTransform
    from .transforms import HFImageProcessorTransform as HFImageProcessorTransform
    from .transforms import ImageTransform as ImageTransform
    from .transforms import PreprocessConfig as PreprocessConfig
    from .transforms import apply_preprocess_overrides as apply_preprocess_overrides
    from .transforms import build_transform as build_transform
    from .transforms import to_rgb as to_rgb
    from .wds import WebDatasetSource as WebDatasetSource

__all__ = [
    "SPLITS",
    "UNLABELLED",
    "Batch",
    "CSVSource",
    "CallableTransform",
    "DataSource",
    "DigitsSource",
    "FolderSource",
    "HFDatasetSource",
    "HFImageProcessorTransform",
    "ImageLoadError",
    "ImageTransform",
    "PreprocessConfig",
    "SyntheticSource",
    "TorchDatasetSource",
    "WebDatasetSource",
    "apply_preprocess_overrides",
    "build_transform",
    "check_labels",
    "create_source",
    "iterate_batches",
    "list_sources",
    "prepare_item",
    "source_from_object",
    "split_coverage",
    "stratified_splits",
    "stratified_subset",
    "to_rgb",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
