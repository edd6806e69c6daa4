"""heads stage (see DESIGN.md)."""
