import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from emofuse.cli import extract_embeddings
from emofuse.corpora import load_corpus
from emofuse.extract.encoders import HFAudioEncoder
from emofuse.store import FeatureStore, StoreWriter, copy_store

BIN = Path(sys.executable).parent


def cli(*args, **kw):
    return subprocess.run([str(BIN / "extract-embeddings"), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, **kw)


def assert_same_store(a, b, streams=("audio", "text")):
    with FeatureStore(a) as fa, FeatureStore(b) as fb:
        assert fa.corpus_fingerprint == fb.corpus_fingerprint
        for s in streams:
            kind = "tokens" if s == "text" else "frames"
            assert sorted(fa.ids(s, kind)) == sorted(fb.ids(s, kind))
            for i in fa.ids(s, kind):
                if kind == "frames":
                    assert np.array_equal(fa.frames(s, i), fb.frames(s, i)), (s, i)
                else:
                    ta, tb = fa.tokens(s, i), fb.tokens(s, i)
                    assert np.array_equal(ta.values, tb.values) and list(ta.strings) == list(tb.strings)
            info_a, info_b = fa.stream_info(s), fb.stream_info(s)
            assert info_a["fingerprint"] == info_b["fingerprint"]


@pytest.fixture(scope="module")
def reference(small_fake, tiny_models, tmp_path_factory):
    """One uninterrupted single-process run (float32 storage) to compare against."""
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    r = cli("--corpus", "iemocap", "--root", small_fake.root, "--out", out, "--audio-model", tiny_models["group"],
            "--text-model", tiny_models["bert"], "--store-dtype", "float32", "--batch-seconds", "4", "--commit-seconds", "3")
    assert r.returncode == 0, r.stderr
    return out


def test_store_holds_every_layer_with_stream_info(reference, small_fake, tiny_models):
    utts = load_corpus("iemocap", root=small_fake.root)
    enc = HFAudioEncoder(tiny_models["group"], device="cpu")
    with FeatureStore(reference) as fs:
        assert len(fs.ids("audio")) == len(utts) == 25
        info = fs.stream_info("audio")
        assert info["num_layers"] == 3 and info["dim"] == 32 and info["frame_hop_s"] == 0.02
        assert info["frame_window_s"] == 0.025 and info["preprocessing"]["do_normalize"] is True
        assert info["store_dtype"] == "float32" and info["untrained"] is False and len(info["weights_hash"]) == 32
        u = utts[3]
        wave, _ = sf.read(u.audio_path, dtype="float32")
        direct = enc.encode([wave])[0]
        stored = fs.frames("audio", u.id)
        assert stored.shape == direct.shape and np.abs(stored - direct).max() <= 1e-4
        tk = fs.tokens("text", u.id)
        assert tk.values.shape[1:] == (3, 32) and tk.special[0] and tk.strings[0] == "[CLS]"
        words = [s for s, sp in zip(tk.strings, tk.special) if not sp]
        assert words[0] == u.transcript.split()[0].lower()
        assert fs.stream_info("text")["max_tokens"] == 64


def _extract_args(small_fake, tiny_models, out) -> list[str]:
    """extract-embeddings' arguments for the kill tests: small commit units, so a kill lands mid-way."""
    return ["--corpus", "iemocap", "--root", str(small_fake.root), "--out", str(out), "--audio-model",
            tiny_models["group"], "--text-model", tiny_models["bert"], "--store-dtype", "float32",
            "--batch-seconds", "4", "--commit-seconds", "3"]


def _sigkill_after_parts(cmd: list[str], out: Path, parts: int, poll: float) -> Path:
    """Run ``cmd``, SIGKILL it once the store's folder holds ``parts`` committed part files;
    returns that folder."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = Path(str(out) + ".d")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(folder.glob("*.h5"))) < parts:
        time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill landed"
    return folder


def test_resume_after_sigkill_equals_uninterrupted(reference, small_fake, tiny_models, tmp_path):
    out = tmp_path / "s.h5"
    args = _extract_args(small_fake, tiny_models, out)
    parts = _sigkill_after_parts([str(BIN / "extract-embeddings"), *args], out, 3, 0.01)
    committed = len(list(parts.glob("*.h5")))
    assert committed >= 3, "the run ended before it could be killed mid-way"
    with StoreWriter(out) as w:  # what survived the kill
        survived = len(w.done_ids("audio", "frames"))
    assert 0 < survived < 25
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert f"{survived} already in the store" in r.stdout  # only the unit in flight was recomputed
    assert_same_store(out, reference)
    with FeatureStore(out) as fs:
        assert fs.pending_parts == []


BACKGROUND_CHILD = """
import sys
from emofuse.pipelines import extract as px
root, out, audio, text = sys.argv[1:5]
px.run_extract(px.ExtractConfig(corpus="iemocap", root=root, out=out, audio_model=audio, text_model=text,
                                store_dtype="float32", batch_seconds=4, commit_seconds=3), background=True)
"""


def test_resume_after_sigkill_of_the_background_commit_pipeline(reference, small_fake, tiny_models, tmp_path):
    """The GPU path stages one unit while the previous one is made durable: a kill in the middle
    leaves staged-but-unpublished .tmp parts, which the next run removes; it then computes exactly
    what no published part holds, and the store equals an uninterrupted run's."""
    out = tmp_path / "s.h5"
    parts = _sigkill_after_parts([sys.executable, "-c", BACKGROUND_CHILD, str(small_fake.root), str(out),
                                  tiny_models["group"], tiny_models["bert"]], out, 2, 0.005)
    with StoreWriter(out) as w:  # what survived the kill: published parts only
        survived = len(w.done_ids("audio", "frames"))
        assert not list(parts.glob("*.tmp"))
    assert 0 < survived < 25
    r = cli(*_extract_args(small_fake, tiny_models, out))
    assert r.returncode == 0, r.stderr
    assert f"{survived} already in the store" in r.stdout
    assert_same_store(out, reference)


def test_layer_subset_keeps_the_encoders_layer_numbers(reference, small_fake, tiny_models, tmp_path):
    """--layers keeps a subset; everything downstream names layers as the encoder does."""
    from emofuse.errors import StoreError
    from emofuse.pipelines.data import load_train_data
    out = tmp_path / "sub.h5"
    r = cli("--corpus", "iemocap", "--root", small_fake.root, "--out", out, "--audio-model", tiny_models["group"],
            "--text-model", tiny_models["bert"], "--store-dtype", "float32", "--batch-seconds", "4", "--layers", "0,2")
    assert r.returncode == 0, r.stderr
    with FeatureStore(out) as fs, FeatureStore(reference) as ref:
        for s, kind in (("audio", "frames"), ("text", "tokens")):
            assert fs.stream_info(s)["layers"] == [0, 2] and fs.layer_ids(s, kind) == [0, 2]
            assert fs.row_shape(s, kind)[0] == 2
            ids = fs.ids(s, kind)[:5]
            got, full = fs.load(s, kind, ids=ids, layers=[2]), ref.load(s, kind, ids=ids, layers=[2])
            assert np.array_equal(got.data, full.data)
            with pytest.raises(StoreError, match="layer 1 of stream .* was not kept at extraction"):
                fs.load(s, kind, layers=[1])
        assert fs.stream_info("audio")["fingerprint"] != ref.stream_info("audio")["fingerprint"]
        data = load_train_data(fs, ["F", "T"], "audio", "text", "2", torch.device("cpu"))
        assert data.layers == {"F": [2], "T": [2]}
        data = load_train_data(fs, ["F"], "audio", "text", None, torch.device("cpu"))
        assert data.layers["F"] == [0, 2]
        assert load_train_data(fs, ["F"], "audio", "text", "last", torch.device("cpu")).layers["F"] == [2]
    # 'last' is the encoder's last layer (before: the last one kept, layer 1 of a 4-layer encoder here)
    from emofuse.errors import EmofuseError
    from emofuse.pipelines.data import parse_layers
    with pytest.raises(EmofuseError, match=r"--audio-layers last: the encoder's last layer is 3, and the stream 'audio' "
                                           r"has layers 0\.\.1 \(extracted with --layers\); name a kept layer \(--audio-layers 1\)"):
        parse_layers("last", 2, [0, 1], option="--audio-layers", stream="audio", encoder_layers=4)
    with pytest.raises(EmofuseError, match=r"layers \[2, 3\] do not exist"):
        parse_layers("1-", 2, [0, 1], encoder_layers=4)
    assert parse_layers("2-", 2, [0, 2], encoder_layers=3) == [1] == parse_layers("last", 2, [0, 2], encoder_layers=3)
    # one layer kept, not the last: a head's default 'last' is refused too, saying where 'last' came from
    one = tmp_path / "one.h5"
    r = cli("--corpus", "iemocap", "--root", small_fake.root, "--out", one, "--audio-model", tiny_models["group"],
            "--text-model", "none", "--store-dtype", "float32", "--layers", "1")
    assert r.returncode == 0, r.stderr
    from emofuse.pipelines.data import select_layers
    with FeatureStore(one) as fs:
        with pytest.raises(EmofuseError, match=r"the encoder's last layer is 2, and the stream 'audio' has layers 1 "
                                               r".*\('last' is this head's default; choose with --audio-layers\)"):
            select_layers(fs, ["F"], "audio", "text", {"audio": "last", "text": None, "defaults": ("audio",)})
        assert select_layers(fs, ["F"], "audio", "text", {"audio": None, "text": None, "defaults": ("audio",)}) == \
            {"F": ([0], [1], 32)}
    # emofuse info names the kept layers (before: "3 layers x 32", as if all were stored)
    from emofuse.pipelines.describe import describe_store
    assert "(layers [0, 2] of 3 x " in describe_store(str(out)), describe_store(str(out))
    r = cli("--corpus", "iemocap", "--root", small_fake.root, "--out", tmp_path / "x.h5", "--audio-model",
            tiny_models["group"], "--text-model", "none", "--layers", "0,7")
    assert r.returncode == 2 and "layers [7] do not exist" in r.stderr


def test_changed_audio_is_refused_then_recomputed_with_update_corpus(reference, small_fake, tiny_models, tmp_path):
    """A wav re-recorded with the same name and size: the store notices (audio digest), refuses
    with the list, and --update-corpus recomputes exactly that utterance."""
    import shutil
    root = tmp_path / "corpus"
    shutil.copytree(small_fake.root, root)
    out = tmp_path / "s.h5"
    copy_store(reference, out)
    victim = sorted(root.rglob("*.wav"))[3]
    wave, sr = sf.read(victim, dtype="int16")
    sf.write(victim, wave[::-1].copy(), sr, subtype="PCM_16")  # same length, same size, other content
    args = ["--corpus", "iemocap", "--root", root, "--out", out, "--audio-model", tiny_models["group"],
            "--text-model", tiny_models["bert"], "--store-dtype", "float32", "--batch-seconds", "4"]
    r = cli(*args)
    assert r.returncode == 2 and f"{victim.stem}: audio content changed" in r.stderr and "--update-corpus" in r.stderr
    r = cli(*args, "--update-corpus")
    assert r.returncode == 0, r.stderr
    assert "1 audio content changed; the cached tensors of 1 utterances are dropped and recomputed" in r.stdout
    assert "24 already in the store" in r.stdout
    with FeatureStore(out) as fs, FeatureStore(reference) as ref:
        assert not np.array_equal(fs.frames("audio", victim.stem), ref.frames("audio", victim.stem))
        other = next(i for i in fs.ids("audio") if i != victim.stem)
        assert np.array_equal(fs.frames("audio", other), ref.frames("audio", other))
        assert sorted(fs.ids("text", "tokens")) == sorted(ref.ids("text", "tokens"))
    assert cli(*args).returncode == 0  # the store now describes the changed corpus


def test_second_writer_is_refused(small_fake, tiny_models, tmp_path):
    out = tmp_path / "s.h5"
    from emofuse.corpora import utterance_table
    table = utterance_table(load_corpus("iemocap", root=small_fake.root))
    with StoreWriter(out, table):
        r = cli("--corpus", "iemocap", "--root", small_fake.root, "--out", out, "--audio-model", tiny_models["group"],
                "--text-model", "none")
    assert r.returncode == 2 and "another process is writing" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_other_encoder_or_corpus_is_refused(reference, small_fake, tiny_models, tmp_path):
    out = tmp_path / "s.h5"
    copy_store(reference, out)
    r = cli("--corpus", "iemocap", "--root", small_fake.root, "--out", out, "--audio-model", tiny_models["layer"],
            "--text-model", "none", "--store-dtype", "float32")
    assert r.returncode == 2 and "stream 'audio'" in r.stderr and "weights_hash" in r.stderr
    r = cli("--corpus", "demo", "--out", out, "--audio-model", tiny_models["group"], "--text-model", "none")
    assert r.returncode == 2 and "another corpus" in r.stderr
    # another stream name is the way to keep both encoders
    r = cli("--corpus", "iemocap", "--root", small_fake.root, "--out", out, "--audio-model", tiny_models["layer"],
            "--audio-stream", "lv60", "--text-model", "none", "--limit", "3")
    assert r.returncode == 0, r.stderr
    with FeatureStore(out) as fs:
        assert fs.streams == ["audio", "lv60", "text"] and len(fs.ids("lv60")) == 3


def test_manual_shards_merge_to_the_single_run(reference, small_fake, tiny_models, tmp_path):
    common = ["--corpus", "iemocap", "--root", small_fake.root, "--audio-model", tiny_models["group"],
              "--text-model", tiny_models["bert"], "--store-dtype", "float32", "--batch-seconds", "4", "--commit-seconds", "3"]
    for i in range(2):
        r = cli(*common, "--shard", f"{i}/2", "--out", tmp_path / f"shard{i}.h5")
        assert r.returncode == 0, r.stderr
    with FeatureStore(tmp_path / "shard0.h5") as a, FeatureStore(tmp_path / "shard1.h5") as b:
        assert not set(a.ids("audio")) & set(b.ids("audio"))
    r = cli("--merge", tmp_path / "shard0.h5", tmp_path / "shard1.h5", "--out", tmp_path / "merged.h5")
    assert r.returncode == 0, r.stderr
    assert_same_store(tmp_path / "merged.h5", reference)


def free_port() -> int:
    """A TCP port nobody listens on now (a fixed port fails when another run holds it)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_equals_single_run(small_fake, tiny_models, tmp_path):
    out = tmp_path / "dist.h5"
    args = ["--corpus", "iemocap", "--root", str(small_fake.root), "--audio-model", tiny_models["group"],
            "--text-model", tiny_models["bert"], "--store-dtype", "float32", "--batch-seconds", "4", "--commit-seconds", "3", "--device", "cpu"]
    # torchrun gives each rank one thread; float sums depend on the thread count, so the single
    # run to compare with uses one thread too
    one = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([str(BIN / "extract-embeddings"), *args, "--out", str(tmp_path / "single.h5")],
                       capture_output=True, text=True, env=one)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
                        "-m", "emofuse", "extract-embeddings", *args, "--out", str(out)],
                       capture_output=True, text=True, env=one, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "merged 2 rank shards" in r.stdout
    assert_same_store(out, tmp_path / "single.h5")
    assert not Path(str(out) + ".shards").exists()


def test_torchrun_update_corpus_equals_the_single_run(small_fake, tiny_models, tmp_path):
    """Before: under torchrun every rank took what the main store held as done, the utterance
    --update-corpus drops included (computed by no rank), and rank 0's merge opened the main store
    without --update-corpus and failed."""
    root = tmp_path / "corpus"
    shutil.copytree(small_fake.root, root)
    args = ["--corpus", "iemocap", "--root", str(root), "--audio-model", tiny_models["group"], "--text-model", "none",
            "--store-dtype", "float32", "--batch-seconds", "4", "--device", "cpu"]
    one = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    single, dist = tmp_path / "single.h5", tmp_path / "dist.h5"
    r = subprocess.run([str(BIN / "extract-embeddings"), *args, "--out", str(single)], capture_output=True, text=True, env=one)
    assert r.returncode == 0, r.stderr
    copy_store(single, dist)
    victim = sorted(root.rglob("*.wav"))[5]
    wave, sr = sf.read(victim, dtype="int16")
    sf.write(victim, -wave, sr, subtype="PCM_16")   # same name and size, other content
    with FeatureStore(single) as fs:
        before = fs.frames("audio", victim.stem)
    r = subprocess.run([str(BIN / "extract-embeddings"), *args, "--out", str(single), "--update-corpus"],
                       capture_output=True, text=True, env=one)
    assert r.returncode == 0, r.stderr

    def torchrun(*more):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                               str(free_port()), "-m", "emofuse", "extract-embeddings", *args, "--out", str(dist), *more],
                              capture_output=True, text=True, env=one, timeout=300)
    r = torchrun()   # refused before any rank extracts, as a single process is
    assert r.returncode != 0 and f"{victim.stem}: audio content changed" in r.stderr and "--update-corpus" in r.stderr
    assert not Path(str(dist) + ".shards").exists() or not list(Path(str(dist) + ".shards").glob("*.h5.d/*.h5"))
    r = torchrun("--update-corpus")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 audio content changed; the cached tensors of 1 utterances are dropped and recomputed" in r.stdout
    assert "merged 2 rank shards" in r.stdout
    assert_same_store(dist, single, streams=("audio",))
    with FeatureStore(dist) as fs:
        assert not np.array_equal(fs.frames("audio", victim.stem), before)


def write_bad_manifest(folder: Path) -> Path:
    sr = 16000
    rng = np.random.default_rng(0)
    (folder / "a").mkdir()
    good = lambda n: (rng.standard_normal(n) * 0.1).astype(np.float32)  # noqa: E731
    sf.write(folder / "a" / "ok1.wav", good(sr), sr)
    sf.write(folder / "a" / "ok2.wav", good(sr // 2), sr, subtype="PCM_16")
    (folder / "a" / "._junk.wav").write_bytes(b"\x00\x05\x16\x07" + bytes(100))
    (folder / "a" / "broken.wav").write_text("this is not audio")
    sf.write(folder / "a" / "empty.wav", np.zeros(0, np.float32), sr)
    sf.write(folder / "a" / "short.wav", good(200), sr)
    nan = good(sr)
    nan[100] = np.nan
    sf.write(folder / "a" / "nan.wav", nan, sr, subtype="FLOAT")
    sf.write(folder / "a" / "stereo44k.flac", np.stack([good(44100), good(44100)], 1), 44100)
    sf.write(folder / "a" / "cut.wav", good(sr), sr, subtype="PCM_16")
    cut = (folder / "a" / "cut.wav").read_bytes()
    (folder / "a" / "cut.wav").write_bytes(cut[:44 + 2 * 6000])   # an interrupted copy: 6000 of 16000 samples
    rows = [("ok1", "a/ok1.wav", "hello there", "neu"), ("ok2", "a/ok2.wav", "good morning", "hap"),
            ("junk", "a/._junk.wav", "x", "ang"), ("broken", "a/broken.wav", "x", "ang"),
            ("empty", "a/empty.wav", "x", "sad"), ("short", "a/short.wav", "x", "sad"),
            ("nan", "a/nan.wav", "x", "neu"), ("stereo", "a/stereo44k.flac", "fine words", "hap"),
            ("notext", "a/ok1.wav", "", "neu"), ("cut", "a/cut.wav", "half a sentence", "ang")]
    lines = ["id,audio,text,label,speaker,session"] + [f"{i},{a},{t},{l},spk,{k % 2 + 1}" for k, (i, a, t, l) in enumerate(rows)]
    data = ("\n".join(lines) + "\n").encode() + b"latin,a/ok2.wav,caf\xe9 au lait,neu,spk,2\n"   # ok2's session: one file, one fold
    (folder / "m.csv").write_bytes(data)
    return folder / "m.csv"


def test_bad_input_is_skipped_with_reasons(tiny_models, tmp_path):
    m = write_bad_manifest(tmp_path)
    out = tmp_path / "s.h5"
    r = cli("--corpus", "manifest", "--manifest", m, "--out", out, "--audio-model", tiny_models["group"],
            "--text-model", tiny_models["bert"])
    assert r.returncode == 0, r.stderr
    with FeatureStore(out) as fs:
        assert sorted(fs.ids("audio")) == ["latin", "notext", "ok1", "ok2", "stereo"]
        assert sorted(fs.ids("text", "tokens")) == ["broken", "cut", "empty", "junk", "latin", "nan", "ok1", "ok2",
                                                    "short", "stereo"]   # a cp1252 line is read as cp1252
        reasons = {(r.id, r.kind): r.reason for r in fs.skipped("audio").itertuples()}
        text_reasons = {r.id: r.reason for r in fs.skipped("text").itertuples()}
    assert "AppleDouble" in reasons[("junk", "frames")]
    assert "unreadable audio" in reasons[("broken", "frames")]
    assert "empty audio" in reasons[("empty", "frames")]
    assert "shorter than the encoder's receptive field" in reasons[("short", "frames")]
    assert "NaN or infinite" in reasons[("nan", "frames")]
    assert reasons[("cut", "frames")] == "truncated wav: its header declares 16000 samples, the file holds 6000 (an interrupted copy?)"
    assert text_reasons == {"notext": "empty transcript"}
    tsv = pd.read_csv(tmp_path / "s.skipped.tsv", sep="\t")   # named after its store
    assert not (tmp_path / "skipped.tsv").exists() and not (tmp_path / "s.h5.lock").exists()
    assert len(tsv) == 7 and set(tsv["stream"]) == {"audio", "text"}
    assert "7 skipped" not in r.stdout and "6 skipped" in r.stdout and "1 skipped" in r.stdout


def _wav_bytes(samples: np.ndarray, channels: int = 1, before_fmt: bytes = b"", before_data: bytes = b"",
               data_size: int | None = None, riff_size: int | None = None) -> bytes:
    """A 16 kHz PCM16 RIFF/WAVE file built chunk by chunk (extra chunks, sizes as a writer left them)."""
    import struct
    data = samples.astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, channels, 16000, 16000 * 2 * channels, 2 * channels, 16)
    body = (b"WAVE" + before_fmt + b"fmt " + struct.pack("<I", len(fmt)) + fmt + before_data + b"data"
            + struct.pack("<I", len(data) if data_size is None else data_size) + data)
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def test_truncated_wav_is_told_from_its_header(tmp_path):
    """A wav holding less audio than its header declares (an interrupted copy) is BadInput with both
    counts, wherever its data chunk lies (after LIST chunks, an odd-sized one padded); what is not a
    clear truncation is left to soundfile: sizes left open by a streaming writer, RF64, FLAC, a file
    cut inside its header, extra bytes after the data."""
    import struct

    from emofuse.corpora import Utterance
    from emofuse.extract.audio import BadInput, load_audio, wav_truncation

    x = (np.random.default_rng(0).standard_normal(1000) * 3000).astype(np.int16)
    info = b"LIST" + struct.pack("<I", 17) + b"INFOISFT" + struct.pack("<I", 5) + b"emof\x00" + b"\x00"  # odd: padded
    junk = b"JUNK" + struct.pack("<I", 9) + b"123456789" + b"\x00"

    def load(name, data):
        path = tmp_path / name
        path.write_bytes(data)
        return load_audio(Utterance(id=name, audio_path=str(path), transcript="", label="neu", session=1,
                                    speaker="s", gender="F"), 16000)

    for name, whole, samples in [("plain.wav", _wav_bytes(x), 1000),
                                 ("list.wav", _wav_bytes(x, before_fmt=info, before_data=junk + info), 1000),
                                 ("stereo.wav", _wav_bytes(np.repeat(x, 2), channels=2), 1000)]:
        assert len(load(name, whole)) == samples
        assert len(load(name, whole + b"tail bytes")) == samples
        # a header rounded up by a few samples (10 ms at most) is a writer's habit, not a cut copy
        assert len(load(name, whole[:len(whole) - 4 * 2 * (2 if name == "stereo.wav" else 1)])) == samples - 4
        with pytest.raises(BadInput, match=f"^truncated wav: its header declares {samples} samples, the file holds "
                                           f"{samples - 301} "):
            load(name, whole[:len(whole) - 301 * 2 * (2 if name == "stereo.wav" else 1)])
    cut = _wav_bytes(x)[:1000]
    for name, data in [("open.wav", _wav_bytes(x, data_size=0xFFFFFFFF, riff_size=0xFFFFFFFF)[:1000]),
                       ("zero.wav", _wav_bytes(x, data_size=0, riff_size=0)[:1000]),
                       ("riff-open.wav", _wav_bytes(x, riff_size=0xFFFFFFFF)[:1000]),
                       ("rf64.wav", b"RF64" + cut[4:]), ("header-cut.wav", cut[:30])]:
        with open(tmp_path / name, "wb") as f:
            f.write(data)
        with open(tmp_path / name, "rb") as f:
            assert wav_truncation(f, f.read(12)) is None, name
    assert len(load("open.wav", _wav_bytes(x, data_size=0xFFFFFFFF, riff_size=0xFFFFFFFF)[:1000])) > 0
    sf.write(tmp_path / "a.flac", x, 16000)
    with open(tmp_path / "a.flac", "rb") as f:
        assert wav_truncation(f, f.read(12)) is None


def test_fail_mode_stops_with_one_sentence_and_keeps_work(tiny_models, tmp_path):
    write_bad_manifest(tmp_path)
    sf.write(tmp_path / "a" / "long.wav", (np.random.default_rng(1).standard_normal(32000) * 0.1).astype(np.float32), 16000)
    m = tmp_path / "m2.csv"  # batches go longest first: long (2 s) is committed before nan (1 s)
    m.write_text("id,audio,text,label,speaker,session\nlong,a/long.wav,hi,neu,s,1\nnan,a/nan.wav,yo,hap,s,2\n")
    out = tmp_path / "s.h5"
    r = cli("--corpus", "manifest", "--manifest", m, "--out", out, "--audio-model", tiny_models["group"],
            "--text-model", "none", "--on-error", "fail", "--batch-seconds", "0.6", "--commit-seconds", "0.1")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("error: nan: audio holds 1 NaN or infinite samples") and "nan.wav" in r.stderr
    with FeatureStore(out) as fs:  # the batch committed before the bad one is kept
        assert fs.ids("audio") == ["long"]


def test_missing_model_offline_says_how_to_fix(tmp_path):
    r = cli("--corpus", "demo", "--out", tmp_path / "s.h5", "--audio-model", "facebook/wav2vec2-base",
            "--text-model", "none")
    assert r.returncode == 2
    assert "HF_HUB_OFFLINE" in r.stderr and "local checkpoint folder" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_egemaps_stream(small_fake, tmp_path):
    out = tmp_path / "s.h5"
    assert extract_embeddings(["--corpus", "iemocap", "--root", str(small_fake.root), "--out", str(out),
                               "--audio-model", "opensmile:eGeMAPSv02", "--text-model", "none", "--limit", "4"]) == 0
    with FeatureStore(out) as fs:
        info = fs.stream_info("egemaps")
        assert info["num_layers"] == 1 and info["dim"] == 25 and info["frame_hop_s"] == 0.01
        assert info["default_norm"] == "global"   # train-head standardises it unless --norm says otherwise
        u = fs.ids("egemaps")[0]
        x = fs.frames("egemaps", u)
        dur = fs.utterances.loc[u, "duration"]
        assert x.shape[1:] == (1, 25) and x.dtype == np.float32 and abs(len(x) - dur * 100) < 8
        assert np.isfinite(x).all()


def test_bfloat16_is_close_to_float32():
    # a realistically wide front end (256 conv channels); the 16-channel test models drift more
    rng = np.random.default_rng(1)
    w = (rng.standard_normal(32000) * 0.1).astype(np.float32)
    a = HFAudioEncoder("untrained:wav2vec2-small", device="cpu").encode([w])[0]
    b = HFAudioEncoder("untrained:wav2vec2-small", device="cpu", dtype="bfloat16").encode([w])[0]
    assert a.shape == b.shape == (99, 5, 256)
    for layer in range(a.shape[1]):
        x, y = a[:, layer].ravel(), b[:, layer].ravel()
        assert float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y)) > 0.99
    assert torch.get_default_dtype() == torch.float32


def test_background_commits_give_the_same_store(reference, small_fake, tiny_models, tmp_path, monkeypatch):
    """The GPU path commits in a background thread; forced on here (CPU), the store is the same
    and --on-error fail still keeps what was encoded before the bad input. Its threads run under
    a short switch interval (the writer gives the GIL back at every chunk), restored after the
    run, also after one that failed."""
    import sys

    from emofuse.errors import EmofuseError
    from emofuse.pipelines import extract as px
    from emofuse.pipelines.extract.threads import SWITCH_INTERVAL_S
    from emofuse.store import StoreWriter
    intervals, stage = [], StoreWriter.stage

    def stage_noting_the_interval(self, stream, *a, **k):
        if stream == "audio":   # the audio phase's commits, which run in background threads
            intervals.append(sys.getswitchinterval())
        return stage(self, stream, *a, **k)
    monkeypatch.setattr(StoreWriter, "stage", stage_noting_the_interval)
    before = sys.getswitchinterval()
    out = tmp_path / "bg.h5"
    cfg = px.ExtractConfig(corpus="iemocap", root=str(small_fake.root), out=str(out), audio_model=tiny_models["group"],
                           text_model=tiny_models["bert"], store_dtype="float32", batch_seconds=4, commit_seconds=3)
    summary = px.run_extract(cfg, background=True)
    assert summary.streams[0].done == 25 and summary.streams[0].time_write_busy > 0
    assert_same_store(out, reference)
    assert intervals and all(abs(i - SWITCH_INTERVAL_S) < 1e-9 for i in intervals) and sys.getswitchinterval() == before
    write_bad_manifest(tmp_path)
    sf.write(tmp_path / "a" / "long.wav", (np.random.default_rng(1).standard_normal(32000) * 0.1).astype(np.float32), 16000)
    m = tmp_path / "m2.csv"
    m.write_text("id,audio,text,label,speaker,session\nlong,a/long.wav,hi,neu,s,1\nnan,a/nan.wav,yo,hap,s,2\n")
    cfg = px.ExtractConfig(corpus="manifest", manifest=str(m), out=str(tmp_path / "f.h5"), audio_model=tiny_models["group"],
                           text_model=None, on_error="fail", batch_seconds=0.6, commit_seconds=0.1)
    with pytest.raises(EmofuseError, match="NaN or infinite"):
        px.run_extract(cfg, background=True)
    with FeatureStore(tmp_path / "f.h5") as fs:
        assert fs.ids("audio") == ["long"]
    assert sys.getswitchinterval() == before


def test_all_finite_reads_float16_exponent_bits():
    from emofuse.pipelines.extract.stream import all_finite as _all_finite
    a = np.random.default_rng(0).standard_normal((50, 3, 8)).astype(np.float16)
    assert _all_finite(a) and _all_finite(a[:0]) and _all_finite(np.float16([65504.0, -65504.0]))
    for bad in (np.inf, -np.inf, np.nan):
        b = a.copy()
        b[7, 1, 2] = bad
        assert not _all_finite(b) and not _all_finite(b.astype(np.float32))
    assert not _all_finite(np.float32([1e6]).astype(np.float16))  # beyond float16's range: inf


@pytest.mark.parametrize("background", [False, True])
def test_prefetch_returns_every_batch_in_order_and_reads_ahead_at_most_depth(background):
    import threading
    from emofuse.pipelines.extract.threads import Prefetch
    batches = [[f"b{k}u{j}" for j in range(k % 3 + 1)] for k in range(7)]
    read_log, lock = [], threading.Lock()

    def read(item):
        with lock:
            read_log.append(item)
        return item.upper()
    p = Prefetch(batches, read, background, depth=2)
    try:
        for k, b in enumerate(batches):
            if background:
                time.sleep(0.05)  # the reader has had time to run ahead; never beyond depth batches
                ahead = {i.split("u")[0] for i in read_log}
                assert ahead <= {f"b{j}" for j in range(k + 2)}
            assert p.next_batch() == [i.upper() for i in b]
    finally:
        p.close()
    assert read_log == [i for b in batches for i in b]


def test_background_commits_stage_while_the_previous_unit_is_published_and_keep_order():
    """Unit k+1 is staged while unit k is still being made durable; units are published in the
    order they were staged; never more than one unit waits to be published; an error in either
    stage reaches the caller, and close() still publishes everything staged before it."""
    import threading
    from emofuse.pipelines.extract.summary import StreamSummary
    from emofuse.pipelines.extract.threads import BackgroundCommits
    log, lock = [], threading.Lock()
    release = {k: threading.Event() for k in range(5)}
    staged_while = {}

    def unit(k, fail_publish=False):
        def stage():
            with lock:
                staged_while[k] = [e for e in log if e[0] == "publish-start" and (("publish-end", e[1]) not in log)]
                log.append(("staged", k))

            def publish():
                with lock:
                    log.append(("publish-start", k))
                assert release[k].wait(10)
                if fail_publish:
                    raise OSError(28, "No space left on device")
                with lock:
                    log.append(("publish-end", k))
            return publish
        return stage
    bc = BackgroundCommits(StreamSummary("audio", "audio", "x", False), background=True)
    bc.submit(unit(0))
    time.sleep(0.1)
    bc.submit(unit(1))      # stages while unit 0 waits for its fsync
    time.sleep(0.1)
    assert staged_while[1] == [("publish-start", 0)]
    release[0].set()
    release[1].set()
    bc.submit(unit(2, fail_publish=True))
    release[2].set()
    time.sleep(0.1)
    with pytest.raises(OSError, match="No space"):
        bc.submit(unit(3))
    release[3].set()
    bc.close()
    ends = [k for what, k in log if what == "publish-end"]
    assert ends == [0, 1]
    assert [k for what, k in log if what == "staged"] == [0, 1, 2]
    assert bc.s.time_write_busy > 0


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo ran > ran.txt",))


def test_checkpoint_with_a_malicious_pickle_is_one_sentence(tiny_models, tmp_path):
    """transformers refuses it (good); the user used to see a raw _pickle.UnpicklingError."""
    import pickle
    bad = tmp_path / "model"
    shutil.copytree(tiny_models["group"], bad)
    os.remove(bad / "model.safetensors")
    (bad / "pytorch_model.bin").write_bytes(pickle.dumps(_RunsCode()))
    r = cli("--corpus", "demo", "--out", tmp_path / "s.h5", "--audio-model", bad, "--text-model", "none")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"error: could not load the audio model from {bad}: its pickled weights file holds "
                               "more than tensors and was refused")
    assert not (tmp_path / "ran.txt").exists() and not Path("ran.txt").exists()


def test_only_rank_0_speaks_under_torchrun(capsys):
    """Messages go through logging (emofuse.logs); under torchrun the other ranks' extraction
    messages are dropped, and the process's setting is restored afterwards."""
    import logging

    from emofuse.logs import show_messages
    from emofuse.pipelines.extract import distributed, job
    show_messages()
    with distributed._silenced(True):
        job.log.info("from another rank")
        job.log.warning("note: from another rank")
    with distributed._silenced(False):
        job.log.info("from rank 0")
    distributed.log.info("merged 2 rank shards")
    assert capsys.readouterr().out.splitlines() == ["from rank 0", "merged 2 rank shards"]
    assert logging.getLogger("emofuse.pipelines.extract").level == logging.NOTSET


def test_a_segment_is_cut_as_written_or_refused(tmp_path):
    """Slices (manifest/lhotse start, end): a blank cell (NaN) is no bound (predict --manifest with
    some rows sliced failed on NaN); a start a few ms before the file is its start; a start further
    before it (lhotse allows supervisions sticking out) was read from the END of the file by
    soundfile, now refused; an empty segment is refused."""
    import soundfile as sf

    from emofuse.extract.audio import BadInput, segment_samples
    sf.write(tmp_path / "a.wav", np.zeros(16000, np.float32), 16000)
    info = sf.info(str(tmp_path / "a.wav"))
    assert segment_samples(float("nan"), float("nan"), info) == (0, None)
    assert segment_samples(-0.004, 0.5, info) == (0, 8000)
    for start, end, match in ((-0.05, 0.5, "lies outside the file"), (0.5, 0.5, "is empty"), (0.6, 0.5, "is empty"),
                              (1.0, None, "is empty")):
        with pytest.raises(BadInput, match=match):
            segment_samples(start, end, info)


def test_slice_keys_and_durations(tmp_path):
    """A whole file and the same file given as [0, its length] (a lhotse manifest's way) are one
    recording for evaluate's overlap check (before: keys 'nan|nan' and '0.0|1.3' never met, and a
    model was scored on its own training audio as cross-corpus); a slice given by its end alone
    lasts until its end (before: the whole file's length, so the past-audio check let through
    alignments running past the slice)."""
    import pandas as pd
    import soundfile as sf

    from emofuse.corpora import Utterance, utterance_table
    from emofuse.pipelines.predict import recording_keys
    sf.write(tmp_path / "a.wav", np.zeros(20800, np.float32), 16000)   # 1.3 s
    mk = lambda i, s, e: Utterance(id=i, audio_path=str(tmp_path / "a.wav"), transcript="x", label="neu",  # noqa: E731
                                   session="1", speaker="s", start=s, end=e)
    t = utterance_table([mk("whole", None, None), mk("span", 0.0, 1.3), mk("end", None, 0.7), mk("mid", 0.2, 0.7)])
    d = dict(zip(t["id"], t["duration"].astype(float)))
    assert d["end"] == pytest.approx(0.7) and d["whole"] == pytest.approx(1.3)
    keys = recording_keys(t.set_index("id", drop=False))
    assert keys["whole"] == keys["span"] and len({keys["whole"], keys["end"], keys["mid"]}) == 3
    old = t.set_index("id", drop=False)
    old.loc["end", "duration"] = 1.3   # a store written before: the end-only slice had the file's length
    assert recording_keys(old)["end"] == keys["end"]   # keyed by its recorded end
    assert recording_keys(old.drop(columns=["start"]))["whole"] == keys["whole"]
    legacy = recording_keys(t.set_index("id", drop=False), legacy=True)   # what older exports recorded
    assert legacy["whole"] != legacy["span"] and isinstance(legacy, pd.Series)


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory):
    """A 4-utterance corpus and tiny encoders whose hidden state 0 alone exceeds float16's 65504
    (its LayerNorm weight scaled by 1e6; the later layers normalise it back)."""
    from transformers import AutoModel
    from emofuse.testing import make_fake_iemocap
    from emofuse.testing import tiny_models as tm
    base = tmp_path_factory.mktemp("overflow")
    corpus = make_fake_iemocap(base / "c", counts={s: {"ang": 1, "neu": 1} for s in (1, 2)}, seconds=1.0, seed=4)
    bert, w2v = tm.tiny_bert(base / "bert"), tm.tiny_wav2vec2(base / "w2v", "group")
    for path, norm in ((bert, lambda m: m.embeddings.LayerNorm), (w2v, lambda m: m.encoder.layer_norm)):
        m = AutoModel.from_pretrained(path)
        norm(m).weight.data *= 1e6
        m.save_pretrained(path)
    return {"root": str(corpus.root), "bert": bert, "w2v": w2v}


def test_text_beyond_float16_is_skipped_like_audio(overflowing, tmp_path):
    """Text activations beyond float16's range were stored as inf (no skip, a numpy RuntimeWarning,
    and every later read refused the stream); now the transcript is skipped with the audio's
    reason, and under --on-error fail the run stops with it."""
    import warnings
    from emofuse.errors import EmofuseError
    from emofuse.pipelines import extract as px
    cfg = dict(corpus="iemocap", root=overflowing["root"], audio_model=None, text_model=overflowing["bert"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        summary = px.run_extract(px.ExtractConfig(out=str(tmp_path / "s.h5"), **cfg))
    assert (summary.streams[0].done, summary.streams[0].skipped) == (0, 4)
    with FeatureStore(tmp_path / "s.h5") as fs:
        reasons = set(fs.skipped("text")["reason"])
    assert reasons == {"the encoder produced values beyond the store's dtype (float16: largest 65504) for this "
                       "transcript, infinite once stored (--store-dtype float32 keeps them)"}
    # training on it names the skips, not an extraction of bert-base-uncased (which the store was not)
    from emofuse.pipelines.data import require
    with FeatureStore(tmp_path / "s.h5") as fs, pytest.raises(EmofuseError) as e:
        require(fs, "text", "T")
    assert "stream 'text' was extracted but its 4 utterances were all skipped (e.g. the encoder produced" in str(e.value)
    assert "s.skipped.tsv lists each" in str(e.value)
    assert "bert-base-uncased" not in str(e.value)
    with pytest.raises(EmofuseError, match=r"transcript, infinite once stored \(--store-dtype float32 keeps them\)"):
        px.run_extract(px.ExtractConfig(out=str(tmp_path / "f.h5"), on_error="fail", **cfg))
    px.run_extract(px.ExtractConfig(out=str(tmp_path / "f32.h5"), store_dtype="float32", **cfg))
    with FeatureStore(tmp_path / "f32.h5") as fs:
        assert len(fs.ids("text", "tokens")) == 4 and np.abs(fs.load("text", "tokens").data).max() > 65504


def test_layers_check_only_what_is_kept(overflowing, tmp_path):
    """With --layers, an overflow in a layer not kept skipped the whole utterance (audio); the
    check runs on the kept layers, so layers 1-2 of both streams are stored for every utterance."""
    from emofuse.pipelines import extract as px
    out = tmp_path / "k.h5"
    summary = px.run_extract(px.ExtractConfig(corpus="iemocap", root=overflowing["root"], out=str(out), layers="1-2",
                                              audio_model=overflowing["w2v"], text_model=overflowing["bert"]))
    assert [(s.done, s.skipped) for s in summary.streams] == [(4, 0), (4, 0)]
    with FeatureStore(out) as fs:
        for s, kind in (("audio", "frames"), ("text", "tokens")):
            assert fs.layer_ids(s, kind) == [1, 2] and np.isfinite(fs.load(s, kind).data.astype(np.float32)).all()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_inf_in_a_float16_store_names_the_float32_store_dtype(overflowing, tmp_path, dtype):
    """A store written by an older emofuse can hold inf where float16 overflowed: the read's
    refusal says to extract into a float32 store (re-extracting into float16 gives inf again)."""
    from emofuse.corpora import corpus_base, utterance_table
    from emofuse.errors import StoreError
    utts = load_corpus("iemocap", root=overflowing["root"])
    path = tmp_path / "s.h5"
    with StoreWriter(path, utterance_table(utts, corpus_base("iemocap", root=overflowing["root"])), {}) as w:
        w.add_stream("audio", {"fingerprint": "enc", "encoder_id": "test", "store_dtype": dtype})
        w.commit("audio", {"frames": {u.id: {"data": np.full((3, 2, 4), np.inf, np.dtype(dtype))} for u in utts}})
        w.finalize()
    with FeatureStore(path) as fs, pytest.raises(StoreError, match="hold NaN or infinite values") as e:
        fs.load("audio")
    assert ("into a new store with --store-dtype float32 (this one keeps float16, whose largest value is 65504), "
            "or restore" in str(e.value)) == (dtype == "float16")


def test_a_roberta_stream_windowed_at_2_fewer_tokens_keeps_its_windows(tmp_path, monkeypatch):
    """emofuse took 2 tokens fewer than RoBERTa's limit before (roberta-base: 510 of 512). A store
    (or a model trained on one) recorded so keeps those windows when extraction resumes or
    predict encodes: the fingerprint is the same, and nothing is refused or mixed."""
    import types
    from emofuse.errors import EmofuseError
    from emofuse.extract import encoders
    from emofuse.pipelines import extract as px
    from emofuse.pipelines.predict import _load_encoder
    from emofuse.testing import tiny_models as tm
    rob = tm.tiny_roberta(tmp_path / "rob", tokenizer_max=64)   # 66 positions: 64 tokens
    enc = encoders.load_text_encoder(rob, device="cpu")
    assert enc.max_len == 64
    words = "Okay, fine. I can't believe you did that again! the quick brown fox " * 12
    text = next(words[:k] for k in range(len(words)) if enc.n_tokens(words[:k]) == 64)   # one window now
    sf.write(tmp_path / "a.wav", np.zeros(16000, np.float32), 16000)
    (tmp_path / "m.csv").write_text("id,audio,text,label,speaker,session\na,a.wav,Hi there,ang,s1,1\n"
                                    f'b,a.wav,"{text}",neu,s2,1\n')   # one file: one session
    cfg = dict(corpus="manifest", manifest=str(tmp_path / "m.csv"), audio_model=None, text_model=rob,
               store_dtype="float32")
    new = tmp_path / "new.h5"
    assert "windowed with overlap" not in px.run_extract(px.ExtractConfig(out=str(new), **cfg)).text()   # one window
    old_limit = encoders.token_limit
    monkeypatch.setattr(encoders, "token_limit", lambda *a: old_limit(*a) - 2)   # what an older emofuse did
    old = tmp_path / "old.h5"
    px.run_extract(px.ExtractConfig(out=str(old), limit=1, **cfg))
    monkeypatch.setattr(encoders, "token_limit", old_limit)
    resumed = px.run_extract(px.ExtractConfig(out=str(old), **cfg))   # resumed with this emofuse: accepted, windows at 62
    assert [s.windowed for s in resumed.streams] == [1]   # the summary counts what it windowed
    assert "(1 longer than the model's maximum: windowed with overlap)" in resumed.text()
    enc.window_at(62)
    with FeatureStore(old) as fo, FeatureStore(new) as fn:
        info = fo.stream_info("text")
        assert (info["max_tokens"], info["window_stride"], fn.stream_info("text")["max_tokens"]) == (62, 30, 64)
        assert info["fingerprint"] == fn.stream_info("text")["fingerprint"]
        assert np.array_equal(fo.tokens("text", "b").values, enc.encode([text])[0]["data"])
        assert not np.allclose(fo.tokens("text", "b").values, fn.tokens("text", "b").values, atol=1e-3)
    model = types.SimpleNamespace(spec={"encoders": {"text": info}})
    assert _load_encoder(model, "text", "text", None, "cpu").max_len == 62   # predict windows as trained
    model.spec["encoders"]["text"] = {**info, "max_tokens": 70, "window_stride": 34}
    with pytest.raises(EmofuseError, match=r"windows text differently .*\(max_tokens 64, the model's stream 'text' "
                                           r"has 70\)"):
        _load_encoder(model, "text", "text", None, "cpu")


def test_a_ranks_shard_of_another_encoder_or_layers_than_the_main_store_is_refused(small_fake, tiny_models, tmp_path):
    """Before: under torchrun each rank took every utterance the main store's stream held as done,
    whatever encoder or layers it held: extracting another model (or --layers) under the same stream
    name ran nothing, merged nothing and exited 0, leaving the old activations in place."""
    from emofuse.errors import StoreError
    from emofuse.pipelines import extract as px
    from emofuse.pipelines.extract.job import extract_into
    main = tmp_path / "main.h5"
    cfg = dict(corpus="iemocap", root=str(small_fake.root), audio_model=tiny_models["group"], text_model=None,
               device="cpu", limit=4)
    px.run_extract(px.ExtractConfig(out=str(main), layers="0,1", **cfg))
    shard = tmp_path / "main.h5.shards" / "rank0-of-2.h5"
    shard.parent.mkdir()
    with pytest.raises(StoreError, match=r"stream 'audio' in .*main\.h5 holds .*; this run brings .* \[layers: \[0, 1\] "
                                         r"in main\.h5, \[1, 2\] in this run\]: extract with the stream's own "
                                         r"--layers 0,1, name another stream"):
        extract_into(px.ExtractConfig(out=str(main), layers="1,2", shard="0/2", **cfg), str(shard), main_store=str(main))
    # the same encoder and layers: the rank's shard is made, and skips what the main store holds
    summary = extract_into(px.ExtractConfig(out=str(main), layers="0,1", shard="0/2", **cfg), str(shard),
                           main_store=str(main))
    assert summary.streams[0].done == 0 and summary.streams[0].reused > 0
