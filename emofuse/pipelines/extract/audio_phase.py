"""The audio phase: length-sorted batches grouped into commit units, audio read ahead, encoded,
checked and committed one unit at a time (in the background on a GPU)."""

from __future__ import annotations

import logging
import time

import numpy as np

from ...corpora import Utterance
from ...extract.audio import MIXED, RESAMPLED, BadInput, load_audio
from ...extract.batching import commit_units, length_batches
from .config import shard_part
from ..progress import progress_bar
from .stream import StreamJob
from .threads import BackgroundCommits, Prefetch, short_switch_interval

log = logging.getLogger(__name__)


def batch_seconds(job: StreamJob) -> float:
    """Padded audio seconds per forward: ``--batch-seconds``, else 120 on CUDA and 0 (one
    utterance per forward, measured fastest there) on a CPU."""
    if job.cfg.batch_seconds is not None:
        return job.cfg.batch_seconds
    return 120.0 if job.on_gpu() else 0.0


def run_audio_phase(job: StreamJob, selection: list[Utterance], done: set[str], durations: dict[str, float]) -> None:
    """Encode every utterance of ``selection`` not in ``done`` (this shard's part of the plan)."""
    enc, s = job.encoder, job.summary
    by_id = {u.id: u for u in selection}
    # Longest first: each batch then needs at most the memory the previous one freed. Shortest
    # first, every batch asked for larger blocks than any freed so far, and glibc's heap grew with
    # the corpus (CPU, float32: peak RSS 1.5 GB for 60 s of audio, 3.7 GB for 600 s).
    batches = length_batches([u.id for u in selection], [durations[u.id] for u in selection], batch_seconds(job))[::-1]
    plan = shard_part(commit_units(batches, durations, job.cfg.commit_seconds), job.cfg.shard)
    s.reused = sum(1 for unit in plan for b in unit for u in b if u in done)
    # commits are whole units: a unit is either done or not; one written by another plan
    # (e.g. an earlier --limit run) keeps only its missing utterances
    units = [[[u for u in b if u not in done] for b in unit] for unit in plan if any(u not in done for b in unit for u in b)]
    units = [[b for b in unit if b] for unit in units]
    total = float(np.nansum([durations[u] for unit in units for b in unit for u in b]))
    with progress_bar(total=round(total, 1), unit="audio-s", desc=f"{job.name}: encoding audio",
                      bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio-s [{elapsed}<{remaining}, {rate_fmt}{postfix}]") as bar:
        # background threads on a GPU (the CPU is idle then); on a CPU torch already uses every
        # core and a writer thread only slows both (measured: the write share rose from 4 % to
        # 6.5 % of the job on 2 cores)
        background = job.on_gpu() if job.background is None else job.background
        commits = BackgroundCommits(s, background)

        def read(uid: str):
            """(samples, preprocessed wave) of one utterance, or the BadInput that stops it."""
            try:
                w = load_audio(by_id[uid], enc.sample_rate)
                enc.check(w)
                return len(w), enc.preprocess(w)
            except BadInput as e:
                return e
        MIXED.clear()   # before the reads start (a background reader fills them at once)
        RESAMPLED.clear()
        with short_switch_interval(background):
            audio = Prefetch([b for unit in units for b in unit], read, background)
            try:
                for unit in units:
                    _audio_unit(job, unit, by_id, commits, audio)
                    bar.update(round(float(np.nansum([durations[u] for b in unit for u in b])), 1))
                    bar.set_postfix_str(f"{s.done} utts, {s.skipped} skipped, {s.audio_seconds / 3600:.2f} h")
            finally:
                audio.close()
                commits.close()
    if RESAMPLED and enc.info.get("encoder") == "opensmile":
        rates = ", ".join(f"{r} Hz" for r in sorted(RESAMPLED))
        log.warning(f"{job.name}: audio at {rates} was resampled to {enc.sample_rate} Hz before openSMILE (as for "
                    "every encoder here); openSMILE's own tools (opensmile.Smile.process_file) run at the file's "
                    "rate, and descriptors such as loudness and spectral flux differ (by ~40 % at 44.1 kHz): "
                    "compare this stream with published eGeMAPS numbers only for 16 kHz audio")
    if MIXED:   # right for a stereo recording of one voice, wrong for a dyadic one (a speaker per channel)
        log.warning(f"{job.name}: {len(MIXED)} audio file(s) hold several channels (e.g. {sorted(MIXED)[0]}); each "
                    "was mixed to mono, so where the channels hold different speakers, name each utterance's channel "
                    "(manifest column 'channel', 0-based; a lhotse supervision's channel)")


def _audio_unit(job: StreamJob, unit: list[list[str]], by_id: dict[str, Utterance], commits: BackgroundCommits,
                audio: Prefetch) -> None:
    """Encode one commit unit (a few batches) and commit it atomically (in the background). With
    ``--on-error fail`` the utterances encoded before the bad one are committed before the job stops."""
    enc, s = job.encoder, job.summary
    entries, skipped = {}, []
    try:
        for batch in unit:
            t0 = time.perf_counter()
            waves, ok, samples = [], [], []
            for uid, got in zip(batch, audio.next_batch()):
                if isinstance(got, BadInput):
                    job.bad(by_id[uid], got, "audio")
                    skipped.append((uid, "frames", got.reason))
                    continue
                samples.append(got[0])
                waves.append(got[1])
                ok.append(uid)
            t1 = time.perf_counter()
            outs = enc.encode(waves, out_dtype=job.store_dtype, preprocessed=True) if waves else []
            t2 = time.perf_counter()
            for uid, n, o in zip(ok, samples, outs):
                kept = job.keep_finite(o, "audio")
                if isinstance(kept, BadInput):
                    job.bad(by_id[uid], kept, "audio")
                    skipped.append((uid, "frames", kept.reason))
                    continue
                entries[uid] = {"data": kept}
                s.rows += len(o)
                s.audio_seconds += n / enc.sample_rate
            s.time_load += t1 - t0
            s.time_encode += t2 - t1
    finally:
        if entries or skipped:
            def stage():
                staged = job.writer.stage(job.name, {"frames": entries}, skipped)
                n_done, n_skipped = len(entries), len(skipped)   # the arrays need not outlive the staging

                def publish():
                    job.writer.publish(staged)
                    s.done += n_done
                    s.skipped += n_skipped
                return publish
            commits.submit(stage)
