"""pipelines stage (see DESIGN.md)."""
