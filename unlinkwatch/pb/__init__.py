"""Generated from proto/events.proto by scripts/gen-proto.sh; never edit by hand."""
