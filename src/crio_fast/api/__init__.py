"""Generated CRI v1 stubs (api_pb2, api_pb2_grpc), built from proto/ by setup.py."""
