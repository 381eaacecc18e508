"""Backbones, one family per file. Each builder is marked with ``@register_model`` and reached through
the registry's index (:mod:`excite.core.registry`), which imports a family's file when one of its models
is built; nothing here is imported for its side effect."""
