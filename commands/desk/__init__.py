"""The merchant's after-sales desk in the browser (see docs/desk.md)."""
