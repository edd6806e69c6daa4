"""extract stage: audio loading, frozen encoders, exact batching (docs/design.md)."""
