"""The CRI v1 gRPC front: thin servicers that validate, call a manager and map to proto."""
