"""media-service: a WebRTC media service that bounds every resource and detects task leaks."""

__version__ = "0.1.0"
