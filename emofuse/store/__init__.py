"""The HDF5 feature store (schema v2, docs/store-format.md). The only package that imports h5py."""

from .fingerprint import (canonical_json, config_hash, corpus_changes, corpus_fingerprint, digest, same_encoder,
                          stream_fingerprint)
from .h5io import nonfinite
from .index import copy_store, remove_store, store_bytes
from .reader import FeatureStore, Ragged, Segments, Tokens, UncheckedStoreWarning
from .schema import FRAMES, GRANULARITIES, SCHEMA_VERSION, TOKENS, segments_kind
from .maintenance import compact_store, upgrade_store
from .merge import merge_stores
from .writer import SHAPING_INFO, StoreWriter, corpus_update, flags_of, info_differences, shaping_differs

__all__ = ["FeatureStore", "StoreWriter", "merge_stores", "upgrade_store", "compact_store", "copy_store",
           "remove_store", "store_bytes", "Ragged", "Segments", "Tokens", "corpus_fingerprint", "corpus_changes",
           "corpus_update", "shaping_differs", "flags_of", "info_differences", "digest", "canonical_json",
           "config_hash", "same_encoder", "stream_fingerprint", "FRAMES", "TOKENS", "GRANULARITIES", "SCHEMA_VERSION", "segments_kind",
           "UncheckedStoreWarning", "nonfinite", "SHAPING_INFO"]
