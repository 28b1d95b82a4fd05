"""Generated sample data shipped with the package: the demo's catalog and the benchmark's photos."""
