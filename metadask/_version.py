"""The package version, in the ground layer so that any module can read it without importing
``metadask`` itself (whose lazy public API reaches the trainer)."""

__version__ = "0.1.0"
