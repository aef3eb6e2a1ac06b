"""Talking to the BCS and IAM APIs: client, authentication, request signing, parsing."""
