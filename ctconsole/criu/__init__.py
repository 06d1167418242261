"""CRIU access: RPC transport (rpc.py), typed calls (client.py), images (images.py), log explanations (errors.py)."""
