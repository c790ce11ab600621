"""gRPC clients and the user commands built on them."""
