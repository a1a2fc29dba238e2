"""The Cloud Signature Consortium API v1 for remote-signing clients: credentials, SADs, signHash.

A protocol over seals, as filing is: it uses the seal registry, the sealing path and storage
(for SADs shared by every worker), so it sits above ``seals`` and below ``api``.
"""

from gateway.csc.sad import Activation, SadStore, Spending
from gateway.csc.service import CscService

__all__ = ["Activation", "CscService", "SadStore", "Spending"]
