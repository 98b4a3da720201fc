"""Tooling for the book and the repository, kept outside the runtime package."""
