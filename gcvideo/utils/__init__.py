"""Small shared helpers (I/O through iopath, safe checkpoint loading)."""
