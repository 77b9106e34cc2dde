"""Bridges from sead's objectives into other training stacks; each needs its own extra (``sead[trl]``).

Nothing here is imported by ``sead`` itself: ``import sead.integrations.trl`` loads TRL.
"""
