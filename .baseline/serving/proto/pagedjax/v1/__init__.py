"""Generated gRPC stubs of the pagedjax API (see scripts/gen_proto.sh)."""
