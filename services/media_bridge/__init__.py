"""media-bridge: telephony audio over gRPC in, ordered >= 100 ms chunks on Kafka out."""
