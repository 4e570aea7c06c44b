"""Shared plumbing for every Lupita service: settings, logging, privacy, topics, metrics, CLI."""

__version__ = "0.1.0"
