"""One setting from the store or computed (workbench, store, keys, rows) and sweeps of settings."""
