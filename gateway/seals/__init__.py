"""Seal registry, lifecycle and the rule that decides whether a seal may sign now."""
