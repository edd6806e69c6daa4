"""Child process for the byte-flip tests: flips bytes of one file of a store, one at a time, and
after each flip runs ``emofuse info`` (``describe_store``) and reads every tensor back
(``FeatureStore.load`` and the per-utterance readers), printing one JSON line per flip:
``{"offset": …, "outcome": "same" | "error" | "different" | "crash", "detail": …}``.

Run in a child so that the parent can bound its time (a damaged file must never hang a reader).

Usage: python store_flip_child.py STORE FILE SEED N [LO HI]  (flip N random bytes of FILE at
offsets in [LO, HI), default the whole file)"""

import json
import random
import sys
import traceback
import warnings

import numpy as np

from emofuse.errors import EmofuseError
from emofuse.pipelines.describe import describe_store
from emofuse.store import FeatureStore


def snapshot(path):
    """Everything a reader gives: the description, and every entry table's tensors and facts."""
    out = {"info": describe_store(path)}
    with FeatureStore(path) as fs:
        out["table"] = fs.utterances.to_json()
        for s in fs.streams:
            for kind in fs.stream_info(s)["entries"]:
                r = fs.load(s, kind)
                out[f"{s}/{kind}"] = (list(r.ids), r.data.copy(), r.lengths.copy())
                for i in r.ids:
                    if kind == "frames":
                        out[f"{s}/{kind}/{i}"] = fs.frames(s, i)
                    elif kind == "tokens":
                        out[f"{s}/{kind}/{i}"] = tuple(fs.tokens(s, i))
                    else:
                        out[f"{s}/{kind}/{i}"] = tuple(fs.segments(s, kind.split("/")[1], i))
    return out


def same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype and \
            np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    return a == b


def main():
    store, target, seed, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    warnings.simplefilter("ignore")
    with open(target, "rb") as f:
        pristine = f.read()
    lo = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    hi = min(int(sys.argv[6]) if len(sys.argv) > 6 else len(pristine), len(pristine))
    ref = snapshot(store)
    rng = random.Random(seed)
    for _ in range(n):
        off = rng.randrange(lo, hi)
        bad = bytearray(pristine)
        bad[off] ^= rng.randrange(1, 256)
        with open(target, "wb") as f:
            f.write(bad)
        try:
            got = snapshot(store)
            outcome, detail = ("same", "") if same(ref, got) else ("different", "")
        except EmofuseError as e:
            outcome, detail = "error", str(e)
        except BaseException as e:  # noqa: BLE001 - what the test looks for
            outcome, detail = "crash", "".join(traceback.format_exception_only(type(e), e)).strip()[-400:]
        finally:
            with open(target, "wb") as f:
                f.write(pristine)
        print(json.dumps({"offset": off, "outcome": outcome, "detail": detail}), flush=True)


if __name__ == "__main__":
    main()
