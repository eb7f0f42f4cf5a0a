"""The validator: verification core, encrypted store, seed-file import, and the daemon."""
