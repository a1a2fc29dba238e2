"""Seal filing: applications, their state machine, identifier rules, receipts."""
