"""Durable records of pods and containers, and their recovery at start."""
