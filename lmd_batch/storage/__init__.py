"""Storage: the only code that knows paths on storage (run folder, markers, caches)."""
