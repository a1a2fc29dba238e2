"""Key records: HSM keys with their certificates and status, as security teams manage them."""
