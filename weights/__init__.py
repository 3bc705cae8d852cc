"""Shipped model weights (package data; see README.md here)."""
