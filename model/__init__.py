"""Pipeline-module transformer."""
