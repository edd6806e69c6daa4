#!/usr/bin/env python3
"""Force-align the bundled demo corpus with pocketsphinx and write its IEMOCAP-style
``sentences/ForcedAlignment/<dialog>/<utt>.{wdseg,phseg}`` files (committed, so the demo goes
through the same path as a real IEMOCAP copy). Utterances the aligner cannot align get no files
(missing alignments are normal in IEMOCAP too) and are listed.

    python scripts/align_demo_corpus.py
"""

from __future__ import annotations

import shutil

from emofuse.align.records import is_silence
from emofuse.align.sphinx_aligner import SphinxAligner
from emofuse.align.sphinx_seg import write_seg
from emofuse.corpora import demo_root, load_corpus
from emofuse.errors import EmofuseError


def main() -> None:
    root = demo_root()
    for old in root.glob("Session*/sentences/ForcedAlignment"):
        shutil.rmtree(old)
    aligner = SphinxAligner()
    utts = load_corpus("demo")
    words_total = words_aligned = 0
    failed = []
    for u in utts:
        n_words = len([w for w in u.transcript.split() if w.strip(".,!?")])
        words_total += n_words
        try:
            tiers = aligner.align(u.id, u.audio_path, u.transcript)
        except EmofuseError as e:
            failed.append((u.id, str(e)))
            continue
        words_aligned += len([w for w in tiers["word"] if not is_silence(w.symbol)])
        dialog = u.id.rsplit("_", 1)[0]
        folder = root / f"Session{u.session}" / "sentences" / "ForcedAlignment" / dialog
        folder.mkdir(parents=True, exist_ok=True)
        write_seg(folder / f"{u.id}.wdseg", tiers["word"], "word")
        write_seg(folder / f"{u.id}.phseg", tiers["phone"], "phone")
    print(f"aligned {len(utts) - len(failed)} of {len(utts)} utterances, "
          f"{words_aligned} of {words_total} words ({100 * words_aligned / words_total:.1f} %)")
    for uid, reason in failed:
        print(f"  not aligned: {uid}: {reason}")


if __name__ == "__main__":
    main()
