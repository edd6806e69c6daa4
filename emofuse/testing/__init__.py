"""testing stage (see DESIGN.md)."""
