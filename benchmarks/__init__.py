"""Benchmarks of the gateway against raw PKCS#11 signing and in-process pyHanko (`make bench`)."""
