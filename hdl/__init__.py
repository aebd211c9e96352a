"""Reusable Amaranth cores of the portjournal port logic."""
