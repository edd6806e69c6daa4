"""Store schema v2: names and layout constants (documented in docs/store-format.md)."""

SCHEMA_VERSION = 2
#: schema versions the reader understands (v1: one self-contained file; v2: index + part files)
READABLE_VERSIONS = (1, 2)
STORE_TYPE = "emofuse.store"
PART_TYPE = "emofuse.store-part"

#: Per-stream entry tables ("ragged" groups): frames, tokens, segments/<granularity>.
FRAMES = "frames"
TOKENS = "tokens"
GRANULARITIES = ("phone", "syllable", "word")
INDEX_NAMES = ("ids", "offset", "length", "inputs", "checksum")
DATA = "data"
#: per utterance and stored layer, the checksum of ``data``'s rows (U, L) uint64, written at commit
CHECKSUM = "checksum"
#: how ``checksum`` is computed (the dataset's ``algorithm`` attribute): xxHash XXH3-64 of the
#: utterance's rows of one layer, C order, little-endian bytes, as the reader gets them
CHECKSUM_ALGORITHM = "xxh3_64/utterance-layer"
#: suffix of the folder beside ``STORE.h5`` that holds its immutable part files (v2)
DATA_DIR_SUFFIX = ".d"


def entry_path(stream: str, kind: str) -> str:
    """HDF5 path of an entry table: ``kind`` is ``frames``, ``tokens`` or ``segments/<gran>``."""
    return f"streams/{stream}/{kind}"


def segments_kind(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {list(GRANULARITIES)}, found {granularity!r}")
    return f"segments/{granularity}"


def chunk_rows(row_shape: tuple[int, ...], itemsize: int) -> int:
    """Rows per chunk so that one chunk of one layer is about 256 KiB."""
    per_row = itemsize * (row_shape[-1] if row_shape else 1)
    return int(min(4096, max(16, (1 << 18) // max(per_row, 1))))
