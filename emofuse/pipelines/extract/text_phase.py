"""The text phase: one global plan of length-sorted chunks of transcripts; a shard takes every
n-th chunk, a resumed run drops whole committed chunks so the rest keep their composition."""

from __future__ import annotations

import time

from ...corpora import Utterance
from ...errors import EmofuseError
from ...extract.audio import BadInput, check_transcript
from .config import parse_shard, shard_part
from ..progress import progress_bar
from .stream import StreamJob


def run_text_phase(job: StreamJob, selection: list[Utterance], done: set[str]) -> None:
    """Encode the transcript of every utterance of ``selection`` not in ``done``."""
    enc, cfg, s = job.encoder, job.cfg, job.summary
    by_id = {u.id: u for u in selection}
    items = []
    skipped = []
    i_shard, n_shard = parse_shard(cfg.shard)
    for k, u in enumerate(selection):
        if u.id in done:
            s.reused += 1
            continue
        try:
            text = check_transcript(u.transcript)
            n = enc.n_tokens(text)
            if n > enc.max_len and cfg.on_error == "fail":
                raise EmofuseError(f"{u.id}: transcript has {n} tokens, more than {enc.info['encoder_id']}'s maximum "
                                   f"of {enc.max_len}; run with --on-error skip to window it with overlap")
            items.append((n, u.id, text))
        except BadInput as e:
            if k % n_shard == i_shard:  # bad transcripts: each shard records its share
                job.bad(u, e, "text")
                skipped.append((u.id, "tokens", e.reason))
    # one global plan of chunks, sorted by length; this shard takes chunks i::n; a resumed run
    # drops whole committed chunks, so the remaining chunks keep their composition
    everything = sorted(items + [(enc.n_tokens(u.transcript), u.id, u.transcript) for u in selection
                                 if u.id in done and u.transcript.strip() and "\ufffd" not in u.transcript])
    chunks = shard_part([everything[k:k + cfg.text_batch] for k in range(0, len(everything), cfg.text_batch)],
                        cfg.shard)
    todo_ids = {i for _, i, _ in items}
    chunks = [c for c in chunks if any(i in todo_ids for _, i, _ in c)]
    s.windowed += sum(n > enc.max_len for c in chunks for n, i, _ in c if i in todo_ids)   # this shard's own
    with progress_bar(total=sum(len(c) for c in chunks) + len(skipped), unit="utt", desc=f"{job.name}: encoding text") as bar:
        if skipped:
            job.writer.commit(job.name, {}, skipped)
            s.skipped += len(skipped)
            bar.update(len(skipped))
        for chunk in chunks:
            t1 = time.perf_counter()
            outs = enc.encode([t for _, _, t in chunk])
            t2 = time.perf_counter()
            entries, bad = {}, []
            try:
                for (_, uid, _), o in zip(chunk, outs):
                    if uid not in todo_ids:  # computed only to keep the chunk's composition
                        continue
                    kept = job.keep_finite(o["data"], "transcript")
                    if isinstance(kept, BadInput):   # e.g. beyond float16's range, which the cast turns into inf
                        job.bad(by_id[uid], kept, "text")
                        bad.append((uid, "tokens", kept.reason))
                        continue
                    entries[uid] = {**o, "data": kept}
                    s.rows += len(kept)
            finally:   # under --on-error fail, what was encoded before the bad one is committed
                if entries or bad:
                    job.writer.commit(job.name, {"tokens": entries}, bad)
                    s.done += len(entries)
                    s.skipped += len(bad)
            s.time_encode += t2 - t1
            s.time_write += time.perf_counter() - t2
            bar.update(len(chunk))
