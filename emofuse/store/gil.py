"""Two C calls the store's writer makes with the GIL held (``ctypes.PyDLL``): XXH3-64 from the
xxhash package's library, and ``H5Dwrite_chunk`` from the HDF5 library h5py runs on.

Why: the packages' own functions (``xxhash.xxh3_64_intdigest``, h5py's ``write_direct_chunk``)
give the GIL back for every call. Getting it back beside a thread that is running Python (the
encoding thread of a GPU extraction: it dispatches the model's operators) waits out that thread's
switch interval, and each hand-over interrupts that thread too. A part of 60 s of audio is a few
hundred chunks and a few hundred per-utterance hashes of microseconds each, so those hand-overs
were most of the writer's time beside a busy thread, and slowed the encoding thread in turn
(benchmarks/store_gil.py; docs/store-format.md, "The writer and the GIL").

Each call is found and checked once against the package's own function (same digests; the same
chunk bytes read back); where either cannot be (another platform, another build of h5py), the
package's function is used, and only the speed beside a busy thread differs."""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Callable

import h5py
import numpy as np
import xxhash
from h5py._objects import phil


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _xxh3_64():
    try:
        fn = ctypes.PyDLL(xxhash._xxhash.__file__).XXH3_64bits
    except (OSError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_uint64, (ctypes.c_void_p, ctypes.c_size_t)
    for n in (0, 1, 3, 17, 129, 240, 241, 4099):   # XXH3's size classes
        probe = np.arange(n, dtype=np.uint8) * np.uint8(37)
        if fn(_address(probe), n) != xxhash.xxh3_64_intdigest(probe):
            return None
    return fn


_XXH3_64 = _xxh3_64()


def xxh3_64(a: np.ndarray) -> int:
    """XXH3-64 of a C-contiguous array's bytes, as ``xxhash.xxh3_64_intdigest``, the GIL held."""
    if _XXH3_64 is None or not a.flags.c_contiguous:
        return xxhash.xxh3_64_intdigest(np.ascontiguousarray(a))
    return int(_XXH3_64(_address(a), a.nbytes))


def _loaded_hdf5() -> str | None:
    """The path of the HDF5 library this process runs (h5py's), from the process's memory map."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/libhdf5" in line}
    except OSError:    # no /proc (macOS, Windows)
        return None
    paths = {p for p in paths if "libhdf5_hl" not in os.path.basename(p)}
    return paths.pop() if len(paths) == 1 else None


@functools.cache
def _h5dwrite_chunk():
    """``H5Dwrite_chunk`` of h5py's own HDF5 (its version checked), or None."""
    path = _loaded_hdf5()   # loaded with h5py
    if path is None or h5py.version.hdf5_version_tuple < (1, 10, 3):   # 64-bit hid_t, H5Dwrite_chunk
        return None
    try:
        lib = ctypes.PyDLL(path)
        version = [ctypes.c_uint() for _ in range(3)]
        if lib.H5get_libversion(*map(ctypes.byref, version)) < 0 or \
                tuple(v.value for v in version) != tuple(h5py.version.hdf5_version_tuple[:3]):
            return None
        fn = lib.H5Dwrite_chunk
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = (ctypes.c_int64, ctypes.c_int64, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    # the check: a chunk written through it reads back as written through h5py
    with h5py.File("gil-check.h5", "w", driver="core", backing_store=False) as f:
        want = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
        ds = f.create_dataset("d", shape=(4, 3, 5), dtype=np.float32, chunks=(2, 1, 5))
        offset = np.array([2, 1, 0], np.uint64)
        with phil:
            chunk = np.ascontiguousarray(want[:, 1])
            if fn(ds.id.id, 0, 0, _address(offset), chunk.nbytes, _address(chunk)) < 0:
                return None
        ds.id.write_direct_chunk((0, 1, 0), chunk)
        if not (np.array_equal(ds[2:4, 1], want[:, 1]) and np.array_equal(ds[0:2, 1], want[:, 1])):
            return None
    return fn


def chunk_writer(ds: h5py.Dataset) -> Callable[[tuple[int, ...], np.ndarray], None]:
    """``write(offset, chunk)``: a whole chunk of ``ds`` (C-contiguous, its dtype, no filters)
    handed to the file as it is, like ``ds.id.write_direct_chunk``, the GIL held. Call it inside
    ``with phil`` (h5py's lock around its HDF5 calls, this module's ``phil``)."""
    fn = _h5dwrite_chunk()
    if fn is None:
        return lambda offset, chunk: ds.id.write_direct_chunk(offset, chunk)
    dsid, where = ds.id.id, np.zeros(ds.ndim, np.uint64)
    where_at = _address(where)

    def write(offset: tuple[int, ...], chunk: np.ndarray) -> None:
        if not chunk.flags.c_contiguous:
            raise ValueError("a chunk must be C-contiguous")
        where[:] = offset
        if fn(dsid, 0, 0, where_at, chunk.nbytes, _address(chunk)) < 0:
            raise RuntimeError(f"HDF5 could not write the chunk at {tuple(offset)} of {ds.name}")
    return write
