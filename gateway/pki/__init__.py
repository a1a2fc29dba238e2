"""Certificates: the development CA, CSRs signed in the HSM, chain import and key-match checks."""
