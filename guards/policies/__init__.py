"""Bundled policy packs (TOML data files).

A package only so the ``*.toml`` files ship inside the wheel next to the code that
loads them; nothing here is imported for its own sake.
"""

__all__: list[str] = []
