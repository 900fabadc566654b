"""Turning a MoR model into deployable artifacts: stage wrappers, routing plans (static
buckets, dynamic in-graph routing), one module per target, the manifest, and `export()`."""
