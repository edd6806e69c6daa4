"""Child process for the bytes-written test: runs one stage on an existing store and prints
what this process wrote (from /proc/self/io) and what the store grew by, as JSON.

Usage: python store_io_child.py STORE STAGE, STAGE one of ``tiny`` (a stream of 24 bytes) or
``segments`` (16 MiB of pooled segments on the ``audio`` stream)."""

import json
import sys

import numpy as np

from emofuse.store import StoreWriter, store_bytes


def io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


def main():
    path, stage = sys.argv[1], sys.argv[2]
    size0 = store_bytes(path)
    before = io()
    with StoreWriter(path) as w:
        ids = sorted(w.table["id"])
        if stage == "tiny":
            w.add_stream("tiny", {"fingerprint": "t"})
            w.commit("tiny", {"frames": {ids[0]: {"data": np.ones((3, 1, 4), np.float16)}}})  # 24 bytes
        else:
            w.add_stream("audio", w.stream_infos["audio"])
            rows = (16 << 20) // (13 * 768 * 2) // len(ids) + 1
            for k in range(0, len(ids), 250):
                w.commit("audio", {"segments/word": {i: {"data": np.full((rows, 13, 768), 0.5, np.float16),
                                                         "symbols": np.array(["w"] * rows, dtype=object),
                                                         "spans": np.zeros((rows, 2), np.int32)}
                                                     for i in ids[k:k + 250]}})
        w.finalize()
    after = io()
    print(json.dumps({"wchar": after["wchar"] - before["wchar"], "write_bytes": after["write_bytes"] - before["write_bytes"],
                      "added": store_bytes(path) - size0, "store": store_bytes(path)}))


if __name__ == "__main__":
    main()
