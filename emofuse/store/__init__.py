"""The HDF5 feature store (schema v1, docs/store-format.md). The only package that imports h5py."""

from .fingerprint import corpus_fingerprint, digest, file_tree_hash
from .reader import FeatureStore, Ragged, Segments, Tokens
from .schema import FRAMES, GRANULARITIES, SCHEMA_VERSION, TOKENS, segments_kind
from .writer import StoreWriter, merge_stores

__all__ = ["FeatureStore", "StoreWriter", "merge_stores", "Ragged", "Segments", "Tokens", "corpus_fingerprint",
           "digest", "file_tree_hash", "FRAMES", "TOKENS", "GRANULARITIES", "SCHEMA_VERSION", "segments_kind"]
