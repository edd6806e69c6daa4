"""align stage: alignment readers, the sphinx aligner, seconds → frames, segment pooling (docs/design.md)."""
