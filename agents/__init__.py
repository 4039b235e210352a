"""Agents that act in azgym environments and learn from them."""
