"""The teacher cache: a Zarr v3 group + `samples.parquet` (format v1, see docs/store-format.md)."""

from .format import FORMAT, VERSION, Manifest
from .reader import CacheStore, open_store
from .writer import CacheWriter

__all__ = ["FORMAT", "VERSION", "Manifest", "CacheStore", "open_store", "CacheWriter"]
