"""Key custody across registries: dual control of destroying keys, grants and officer roles."""

from gateway.custody.dual_control import (
    APPROVAL,
    Action,
    DualControl,
    needs_dual_control,
    public_view,
    require_officer,
)

__all__ = [
    "APPROVAL",
    "Action",
    "DualControl",
    "needs_dual_control",
    "public_view",
    "require_officer",
]
