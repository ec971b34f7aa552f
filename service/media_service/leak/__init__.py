"""Leak detection: which tasks belong to which owner, the leak rule and its sampler, the task
dump, and fault injection for fire drills. See docs/leak-detection.md."""
