"""Classical statistics of Fisher information (no neural code)."""
